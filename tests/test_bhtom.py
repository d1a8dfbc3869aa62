"""The BHTOM upload client against a local HTTP server that implements the contract:
token authentication, one multipart file per request (field ``files``), form fields,
201 as the only success, failures with the body's reason, retries with backoff on
timeouts, connection errors and 5xx (never on 4xx), success/ and error/ folders, and
a token that never appears in logs or output. The server can be told per test what
to answer (``plan``); the client's sleep is a recorder, so no test really waits.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from bhcore.bhtom import (BhtomClient, BhtomConfig, BhtomError, Secret, UploadResult,
                          product_type, save_token)
from bhcore.errors import ConfigError

TOKEN = "tok-3f9a1c7e5b2d4a6f8e0c"
LOCAL = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection or name lookup that leaves this machine fails the test."""
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in LOCAL:
            raise RuntimeError(f"network use in a test: connect to {address}")
        return real_connect(self, address)

    def lookup(host, *args, **kwargs):
        if host not in LOCAL and host is not None:
            raise RuntimeError(f"network use in a test: name lookup of {host}")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)


class FakeBhtom:
    """The upload service and the token endpoint on 127.0.0.1, recording requests.

    ``plan`` holds what to do with the next uploads, one entry per request: a status
    (answered with a planned reason), or a dict with ``status``, ``body``,
    ``headers`` and/or ``delay`` (seconds to sit on the request first; a delay
    alone then answers normally). With the plan empty the contract is followed.
    """

    def __init__(self, status_ok: int = 201):
        self.requests: list[dict] = []
        self.plan: list = []
        self.release = threading.Event()       # ends delayed answers at shutdown
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):      # keep the test output clean
                pass

            def _send(self, status, payload, headers=None):
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:                # the client gave up waiting
                    pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                record = {"path": self.path, "auth": self.headers.get("Authorization"),
                          "content_type": self.headers.get("Content-Type")}
                owner.requests.append(record)
                if self.path == "/api/token-auth/":
                    creds = json.loads(raw)
                    if creds == {"username": "ann", "password": "secret pw"}:
                        return self._send(200, {"token": TOKEN})
                    return self._send(400, {"non_field_errors": [
                        "Unable to log in with provided credentials."]})
                if self.path != "/upload/":
                    return self._send(404, {"detail": "Not found."})
                if record["auth"] != f"Token {TOKEN}":
                    return self._send(401, {"detail": "Invalid token."})
                msg = BytesParser(policy=HTTP).parsebytes(
                    b"Content-Type: " + record["content_type"].encode() + b"\r\n\r\n" + raw)
                fields, files = {}, {}
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if part.get_filename():
                        files[name] = (part.get_filename(), part.get_payload(decode=True))
                    else:
                        fields[name] = part.get_content()
                record.update(fields=fields, files=files)
                step = owner.plan.pop(0) if owner.plan else {}
                step = {"status": step} if isinstance(step, int) else step
                if step.get("delay"):
                    owner.release.wait(step["delay"])
                if step.get("status"):
                    return self._send(step["status"], step.get("body", {
                        "detail": f"planned {step['status']}"}), step.get("headers"))
                if len(files) != 1 or "files" not in files:
                    return self._send(400, {"detail": "exactly one file in field 'files'"})
                if fields.get("target") != "Gaia24abc":
                    return self._send(400, {"detail": f"Target {fields.get('target')} "
                                                      "does not exist"})
                if fields.get("data_product_type") == "photometry" and "mjd" not in fields:
                    return self._send(400, {"detail": "mjd is required"})
                return self._send(owner.status_ok, {"message": "ok", "dry_run":
                                                    fields.get("dry_run")})

        self.status_ok = status_ok
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.05})  # quick shutdown

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    with FakeBhtom() as srv:
        yield srv


def client_for(server, token=TOKEN, sleep=None, **settings):
    """A client of ``server``; ``sleep`` records delays instead of waiting."""
    config = BhtomConfig(upload_url=server.url, api_url=server.url,
                         token=Secret(token) if token else None,
                         **{"timeout_s": 10, **settings})
    return BhtomClient(config, sleep=sleep or (lambda s: None))


@pytest.fixture
def files(tmp_path):
    csv = tmp_path / "lc.csv"
    csv.write_text("time,magnitude,error,filter\n60000.5,15.1,0.02,V\n")
    cat = tmp_path / "f1_bhtom.cat"
    cat.write_text("#   1 NUMBER          Running object number\n     1\n")
    (tmp_path / "f1_quality.json").write_text(json.dumps({"mjd": 60000.123456}))
    return csv, cat


def test_authenticate_and_upload_multipart(server, files, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    csv, cat = files
    client = client_for(server, token=None)
    token = client.authenticate("ann", "secret pw")
    assert token.reveal() == TOKEN and TOKEN not in repr(token) and TOKEN not in f"{token}"
    result = client.upload(csv, target="Gaia24abc", observatory="BIALKOW_ANDOR-DW432",
                           filter="GaiaSP/V", dry_run=True, observer="ann", match_dist=2.5,
                           comment="test")
    assert result.ok and result.status == 201 and result.reason == ""
    assert result.attempts == 1 and len(server.requests) == 2     # token + upload
    sent = server.requests[-1]
    assert sent["auth"] == f"Token {TOKEN}"
    assert sent["content_type"].startswith("multipart/form-data; boundary=")
    assert sent["files"]["files"] == ("lc.csv", csv.read_bytes())
    assert sent["fields"] == {"target": "Gaia24abc", "data_product_type": "photometry_csv",
                              "observatory": "BIALKOW_ANDOR-DW432", "filter": "GaiaSP/V",
                              "dry_run": "True", "observer": "ann", "match_dist": "2.5",
                              "comment": "test"}
    result = client.upload(cat, target="Gaia24abc", observatory="X", mjd=60000.25)
    assert result.ok and server.requests[-1]["fields"]["mjd"] == "60000.250000"
    assert server.requests[-1]["fields"]["data_product_type"] == "photometry"
    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err + repr(result) + repr(client.config)
    assert TOKEN not in logged and "secret pw" not in logged


def test_failures_carry_the_reason(server, files):
    csv, cat = files
    client = client_for(server)
    result = client.upload(csv, target="NoSuchTarget", observatory="X")
    assert not result.ok and result.status == 400
    assert result.reason == "Target NoSuchTarget does not exist"
    bad = client_for(server, token="wrong")
    result = bad.upload(csv, target="Gaia24abc", observatory="X")
    assert result.status == 401 and result.reason == "Invalid token."
    with pytest.raises(BhtomError, match="Unable to log in"):
        client_for(server, None).authenticate("ann", "nope")
    with pytest.raises(BhtomError, match="needs the frame's MJD"):
        client.upload(cat, target="Gaia24abc", observatory="X")
    waits = []
    refused = BhtomClient(BhtomConfig(upload_url="http://127.0.0.1:9", token=Secret(TOKEN),
                                      timeout_s=2, attempts=2), sleep=waits.append)
    result = refused.upload(csv, target="Gaia24abc", observatory="X")
    assert not result.ok and result.status is None and result.attempts == 2
    assert "no answer from http://127.0.0.1:9/upload/" in result.reason
    assert "gave up after 2 attempts" in result.reason and len(waits) == 1


def test_missing_token_fails_once_before_any_request(server, files, tmp_path):
    csv, _ = files
    client = client_for(server, None)
    for call in (lambda: client.upload(csv, target="Gaia24abc", observatory="X"),
                 lambda: client.upload_many([csv], move=True, target="Gaia24abc",
                                            observatory="X")):
        with pytest.raises(BhtomError, match="no BHTOM token: set BHTOM_TOKEN"):
            call()
    assert server.requests == [] and csv.is_file()            # nothing sent, nothing moved


def test_status_200_is_not_counted_as_sent(files):
    with FakeBhtom(status_ok=200) as srv:
        [result] = client_for(srv).upload_many([files[0]], move=True, target="Gaia24abc",
                                               observatory="X")
        assert not result.ok and result.status == 200 and result.attempts == 1
        assert "HTTP 200, not 201" in result.reason and "(ok)" in result.reason  # the body
        assert result.moved_to == files[0].parent / "error" / "lc.csv"
        assert len(srv.requests) == 1                          # a 200 is not retried


def test_4xx_is_final_and_carries_the_message(server, files):
    waits = []
    server.plan = [{"status": 422, "body": {"detail": "Observatory X has no camera"}}]
    result = client_for(server, sleep=waits.append).upload(files[0], target="Gaia24abc",
                                                           observatory="X")
    assert not result.ok and result.status == 422 and result.attempts == 1
    assert result.reason == "Observatory X has no camera"
    assert len(server.requests) == 1 and waits == []


def test_5xx_is_retried_with_growing_backoff(server, files):
    waits = []
    server.plan = [503, 502, 500]
    client = client_for(server, sleep=waits.append, attempts=4, backoff_s=2.0)
    result = client.upload(files[0], target="Gaia24abc", observatory="X")
    assert result.ok and result.status == 201 and result.attempts == 4
    assert len(server.requests) == 4 and len(waits) == 3
    assert waits == sorted(waits) and len(set(waits)) == 3            # delays grow
    for k, wait in enumerate(waits):                # 2, 4, 8 s plus up to 10 % jitter
        assert 2.0 * 2 ** k <= wait <= 2.0 * 2 ** k * 1.1


def test_5xx_every_time_gives_up_with_the_reason(server, files):
    waits = []
    server.plan = [{"status": 503, "body": {"detail": "Service busy"}}] * 3
    client = client_for(server, sleep=waits.append, attempts=3, backoff_s=1.0,
                        backoff_max_s=1.5)
    result = client.upload(files[0], target="Gaia24abc", observatory="X")
    assert not result.ok and result.status == 503 and result.attempts == 3
    assert result.reason == "HTTP 503: Service busy (gave up after 3 attempts)"
    assert len(server.requests) == 3 and waits[0] >= 1.0 and waits[1] == 1.5   # capped


def test_retry_after_is_honoured_up_to_the_cap(server, files):
    waits = []
    server.plan = [{"status": 503, "headers": {"Retry-After": "7"}},
                   {"status": 503, "headers": {"Retry-After": "600"}}]
    client = client_for(server, sleep=waits.append, backoff_s=0.01, backoff_max_s=30)
    assert client.upload(files[0], target="Gaia24abc", observatory="X").ok
    assert waits == [7.0, 30.0] and len(server.requests) == 3


def test_timeout_then_success(server, files):
    waits = []
    server.plan = [{"delay": 2.0}]                   # well past the client's timeout
    client = client_for(server, sleep=waits.append, timeout_s=0.2)
    result = client.upload(files[0], target="Gaia24abc", observatory="X")
    assert result.ok and result.status == 201 and result.attempts == 2
    assert len(server.requests) == 2 and len(waits) == 1


def test_timeout_every_time_fails_after_n_attempts(server, tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    for p in (first, second):
        p.write_text("time,magnitude,error,filter\n")
    waits = []
    server.plan = [{"delay": 2.0}] * 3
    client = client_for(server, sleep=waits.append, timeout_s=0.2, attempts=3)
    results = client.upload_many([first, second], move=True, target="Gaia24abc",
                                 observatory="X")
    assert [(r.ok, r.status, r.attempts) for r in results] == [(False, None, 3),
                                                               (False, None, 0)]
    assert results[0].reason == (f"no answer from {server.url}/upload/: timed out "
                                 "(gave up after 3 attempts)")
    assert results[1].reason == "not tried: BHTOM did not answer for a.csv"
    assert len(server.requests) == 3 and len(waits) == 2
    assert first.is_file() and second.is_file()       # unanswered files stay in place


def test_the_token_never_shows_even_when_the_server_echoes_it(server, files, caplog,
                                                              capsys):
    caplog.set_level(logging.DEBUG)
    echo = {"detail": f"token {TOKEN} is busy"}
    server.plan = [{"status": 500, "body": echo}, {"status": 400, "body": echo}]
    results = client_for(server, attempts=2).upload_many([files[0]], target="Gaia24abc",
                                                         observatory="X")
    assert results[0].reason == "token *** is busy" and len(server.requests) == 2
    out = capsys.readouterr()
    assert TOKEN not in caplog.text + out.out + out.err + repr(results)
    assert "retrying" in caplog.text                   # the retry was logged, redacted


def test_upload_many_moves_files_like_the_old_scripts(server, tmp_path):
    good = tmp_path / "a.csv"
    bad = tmp_path / "b.csv"
    for p in (good, bad):
        p.write_text("time,magnitude,error,filter\n")
    client = client_for(server)
    results = [client.upload_many([good], move=True, target="Gaia24abc", observatory="X")[0],
               client.upload_many([bad], move=True, target="Other", observatory="X")[0]]
    assert results[0].moved_to == tmp_path / "success" / "a.csv"
    assert results[1].moved_to == tmp_path / "error" / "b.csv"
    assert not good.exists() and (tmp_path / "success" / "a.csv").is_file()


def test_token_sources_and_private_config(tmp_path, monkeypatch):
    path = tmp_path / "bhtom.json"
    save_token(Secret(TOKEN), path)
    assert (path.stat().st_mode & 0o777) == 0o600
    config = BhtomConfig.load(path, env={})
    assert config.token.reveal() == TOKEN and TOKEN not in repr(config)
    assert (config.attempts, config.backoff_s, config.backoff_max_s) == (4, 2.0, 60.0)
    path.write_text(json.dumps({"token": TOKEN, "attempts": 6, "backoff_s": 0.5}))
    config = BhtomConfig.load(path, env={})
    assert (config.attempts, config.backoff_s) == (6, 0.5)
    path.write_text(json.dumps({"token": TOKEN, "attempts": 0}))
    with pytest.raises(ConfigError, match="attempts >= 1"):
        BhtomConfig.load(path, env={})
    path.write_text(json.dumps({"token": TOKEN}))
    env = {"BHTOM_TOKEN": "from-env", "BHTOM_UPLOAD_URL": "http://127.0.0.1:1"}
    config = BhtomConfig.load(path, env=env)
    assert config.token.reveal() == "from-env" and config.upload_url == "http://127.0.0.1:1"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        BhtomConfig.load(path, env={})
    assert BhtomConfig.load(tmp_path / "absent.json", env={}).token is None


def test_product_types():
    from pathlib import Path
    assert product_type(Path("a.fits")) == "fits_file"
    assert product_type(Path("a.fits.gz")) == "fits_file"
    assert product_type(Path("a.csv")) == "photometry_csv"
    assert product_type(Path("a_bhtom.cat")) == "photometry"
    with pytest.raises(BhtomError):
        product_type(Path("a.png"))


def test_cli_upload(server, files, monkeypatch, caplog):
    from bhcore.cli.main import app
    caplog.set_level(logging.DEBUG)
    csv, cat = files
    monkeypatch.setenv("BHTOM_TOKEN", TOKEN)
    monkeypatch.setenv("BHTOM_UPLOAD_URL", server.url)
    monkeypatch.setenv("BHTOM_API_URL", server.url)
    runner = CliRunner()
    res = runner.invoke(app, ["-v", "upload", str(csv), str(cat), "--target", "Gaia24abc",
                              "--observatory", "X", "--dry-run", "--move"])
    assert res.exit_code == 0, res.output
    assert "lc.csv: sent (HTTP 201, 1 attempt)" in res.output
    assert "2 sent, 0 failed" in res.output
    assert server.requests[-1]["fields"]["mjd"] == "60000.123456"     # from the sidecar
    assert (cat.parent / "success" / cat.name).is_file()
    res = runner.invoke(app, ["upload", str(cat.parent / "success" / cat.name), "--target",
                              "Nope", "--observatory", "X", "--mjd", "60000"])
    assert res.exit_code == 1 and "Target Nope does not exist" in res.output
    assert "failed (HTTP 400, 1 attempt)" in res.output
    assert TOKEN not in res.output and TOKEN not in caplog.text
    assert isinstance(UploadResult, type)


def test_cli_upload_retries_and_summary(server, files, monkeypatch, caplog):
    from bhcore.cli.main import app
    caplog.set_level(logging.DEBUG)
    csv, _ = files
    monkeypatch.setenv("BHTOM_TOKEN", TOKEN)
    monkeypatch.setenv("BHTOM_UPLOAD_URL", server.url)
    server.plan = [503, 503]
    res = CliRunner().invoke(app, ["-v", "upload", str(csv), "--target", "Gaia24abc",
                                   "--observatory", "X", "--attempts", "2",
                                   "--backoff", "0"])
    assert res.exit_code == 1 and len(server.requests) == 2
    assert ("lc.csv: failed (HTTP 503, 2 attempts): HTTP 503: planned 503 "
            "(gave up after 2 attempts)") in res.output
    assert "0 sent, 1 failed" in res.output
    assert TOKEN not in res.output and TOKEN not in caplog.text


def test_cli_upload_without_a_token_sends_nothing(server, files, monkeypatch):
    from bhcore.cli.main import app
    csv, _ = files
    monkeypatch.delenv("BHTOM_TOKEN", raising=False)
    monkeypatch.setenv("BHTOM_UPLOAD_URL", server.url)
    res = CliRunner().invoke(app, ["upload", str(csv), "--target", "Gaia24abc",
                                   "--observatory", "X", "--move"])
    assert res.exit_code == 1 and res.output.count("no BHTOM token") == 1
    assert server.requests == [] and csv.is_file()
