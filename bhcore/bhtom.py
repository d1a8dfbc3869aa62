"""BHTOM upload client: token authentication and one-file-per-request uploads.

Why the standard library: the contract is small (a JSON token request, multipart
uploads, status 201), and a client that only needs ``urllib`` installs anywhere a
telescope computer runs Python. Hosts come from configuration (environment or
``$BHCORE_HOME/bhtom.json``), never from code paths the tests take.

The token is a secret: it is read from ``BHTOM_TOKEN`` or from the config file
(which must be private, mode 0600), kept in a ``Secret`` whose ``repr``/``str``
hide it, sent only in the ``Authorization`` header, and never logged, printed or
written into results. Failures carry the server's reason (the response body).

Telescope sites sit behind slow or flaky links and the service is sometimes busy,
so timeouts, connection errors and HTTP 5xx are retried with capped exponential
backoff (and a little jitter, so many sites do not retry in step), honouring
``Retry-After``. A 4xx is the server's final word and is not retried. A file counts
as sent only on HTTP 201, the contract's success: anything else may mean it was
not stored.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import logging
import mimetypes
import os
import random
import shutil
import stat
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import BhError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_URL = "https://uploadsvc2.astrolabs.pl"     # BHTOM2 upload service
DEFAULT_API_URL = "https://bh-tom2.astrolabs.pl"           # BHTOM2 web host and API
ENV_TOKEN, ENV_UPLOAD, ENV_API = "BHTOM_TOKEN", "BHTOM_UPLOAD_URL", "BHTOM_API_URL"
PRODUCT_TYPES = ("fits_file", "photometry", "photometry_csv", "spectroscopy")
SENT_STATUS = 201          # the only answer that means "stored" (older scripts took 200)
API_OK_STATUS = (200, 201)  # plain API calls (calibration results) answer 200
JITTER = 0.1               # up to +10 % on each backoff delay


class BhtomError(BhError):
    """An upload or API call failed; the message carries the server's reason."""


class Secret:
    """A string that never shows itself in repr, str, f-strings or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = str(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def config_path() -> Path:
    from .pipeline import home
    return home() / "bhtom.json"


@dataclass
class BhtomConfig:
    upload_url: str = DEFAULT_UPLOAD_URL
    api_url: str = DEFAULT_API_URL
    token: Secret | None = None
    timeout_s: float = 120.0
    attempts: int = 4             # requests per file, the first one included
    backoff_s: float = 2.0        # first retry delay; doubles on each retry
    backoff_max_s: float = 60.0   # cap on one delay, Retry-After included

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None
             ) -> "BhtomConfig":
        """File (``{"upload_url", "api_url", "token", "timeout_s", "attempts",
        "backoff_s", "backoff_max_s"}``), then environment."""
        env = os.environ if env is None else env
        path = Path(path) if path is not None else config_path()
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read BHTOM config: {exc.__class__.__name__}",
                                  path=path) from None
            if not isinstance(data, dict):
                raise ConfigError("BHTOM config must be a JSON object", path=path)
            if data.get("token"):
                mode = stat.S_IMODE(path.stat().st_mode)
                if mode & 0o077:
                    raise ConfigError(f"holds a BHTOM token but is readable by others (mode "
                                      f"{mode:o}); run: chmod 600 {path}", path=path)
        try:
            config = cls(upload_url=str(data.get("upload_url", DEFAULT_UPLOAD_URL)),
                         api_url=str(data.get("api_url", DEFAULT_API_URL)),
                         token=Secret(data["token"]) if data.get("token") else None,
                         timeout_s=float(data.get("timeout_s", 120.0)),
                         attempts=int(data.get("attempts", 4)),
                         backoff_s=float(data.get("backoff_s", 2.0)),
                         backoff_max_s=float(data.get("backoff_max_s", 60.0)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad value in BHTOM config: {exc}", path=path) from None
        if config.attempts < 1 or min(config.timeout_s, config.backoff_s,
                                      config.backoff_max_s) < 0:
            raise ConfigError("BHTOM config needs attempts >= 1 and non-negative "
                              "timeout_s, backoff_s, backoff_max_s", path=path)
        if env.get(ENV_UPLOAD):
            config.upload_url = env[ENV_UPLOAD]
        if env.get(ENV_API):
            config.api_url = env[ENV_API]
        if env.get(ENV_TOKEN):
            config.token = Secret(env[ENV_TOKEN])
        return config


def save_token(token: Secret, path: str | Path | None = None) -> Path:
    """Store the token in the config file, created private (0600) from the start."""
    path = Path(path) if path is not None else config_path()
    data = {}
    if path.is_file():
        data = json.loads(path.read_text() or "{}")
    data["token"] = token.reveal()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


@dataclass
class UploadResult:
    path: Path
    ok: bool
    status: int | None
    reason: str = ""
    body: Any = None
    moved_to: Path | None = None
    fields: dict = field(default_factory=dict)
    attempts: int = 0             # requests made for this file (0: none was made)


def product_type(path: Path) -> str:
    """``data_product_type`` from the file name (FITS, CSV, SExtractor catalogue)."""
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz")):
        return "fits_file"
    if name.endswith(".csv"):
        return "photometry_csv"
    if name.endswith((".cat", ".sex", ".txt", ".dat")):
        return "photometry"
    raise BhtomError(f"cannot tell the data product type of {path.name}; pass it explicitly")


def encode_multipart(fields: Mapping[str, str], file_field: str, path: Path
                     ) -> tuple[bytes, str]:
    """A multipart/form-data body with the form fields and one file."""
    boundary = f"bhcore-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                     f"\r\n\r\n{value}\r\n".encode())
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{path.name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode())
    parts.append(path.read_bytes())
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _reason(body: bytes, status: int | None) -> tuple[str, Any]:
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return (text[:500] or f"HTTP {status}"), text
    if isinstance(parsed, dict):
        for key in ("detail", "error", "message", "non_field_errors", "reason"):
            if parsed.get(key):
                value = parsed[key]
                text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
                return text, parsed
    return json.dumps(parsed)[:500], parsed


class BhtomClient:
    """Talks to the BHTOM upload service and API with a token.

    ``sleep`` waits between attempts; tests pass a recorder so they do not wait.
    """

    def __init__(self, config: BhtomConfig | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config or BhtomConfig.load()
        self.sleep = sleep

    def require_token(self) -> None:
        """Fail with one clear message before any request when there is no token."""
        if not self.config.token:
            raise BhtomError(f"no BHTOM token: set {ENV_TOKEN} or store one in "
                             f"{config_path()} (mode 0600)")

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): doubling, jittered, capped;
        at least what the server asked for in ``Retry-After`` (up to the cap)."""
        delay = self.config.backoff_s * 2 ** (attempt - 1) * (1 + random.uniform(0, JITTER))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.config.backoff_max_s)

    def _request(self, url: str, body: bytes, headers: Mapping[str, str]
                 ) -> tuple[int, bytes, float | None]:
        """One POST: (status, body, Retry-After seconds); OSError when there is no answer."""
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as resp:
                return resp.status, resp.read(), None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), _retry_after(exc.headers.get("Retry-After"))
        except urllib.error.URLError as exc:
            reason = exc.reason
            raise reason if isinstance(reason, OSError) else OSError(str(reason)) from None

    def _call(self, url: str, body: bytes, content_type: str, auth: bool = True
              ) -> tuple[int | None, bytes, int, str]:
        """POST with retries: (status or None when never answered, body, attempts,
        why the last attempt failed). Only timeouts, connection errors and 5xx retry."""
        headers = {"Content-Type": content_type, "Accept": "application/json",
                   "User-Agent": "bhcore-bhtom-client"}
        if auth:
            self.require_token()
            headers["Authorization"] = f"Token {self.config.token.reveal()}"
        where = url.split("?")[0]
        attempts = max(1, int(self.config.attempts))
        for attempt in range(1, attempts + 1):
            try:
                status, raw, retry_after = self._request(url, body, headers)
            except (OSError, http.client.HTTPException) as exc:   # timeout, refused, reset
                status, raw, retry_after = None, b"", None
                why = (f"no answer from {where}: "
                       f"{getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__}")
            else:
                if auth:                                  # a server may echo the token
                    raw = raw.replace(self.config.token.reveal().encode(), b"***")
                if status < 500:
                    return status, raw, attempt, ""
                why = f"HTTP {status}: {_reason(raw, status)[0]}"
            if attempt < attempts:
                delay = self.backoff_delay(attempt, retry_after)
                log.warning("%s (attempt %d of %d); retrying in %.1f s", why, attempt,
                            attempts, delay)
                self.sleep(delay)
        return status, raw, attempts, f"{why} (gave up after {attempts} attempts)"

    def authenticate(self, username: str, password: str) -> Secret:
        """``POST /api/token-auth/``; the token is kept in this client and returned."""
        url = self.config.api_url.rstrip("/") + "/api/token-auth/"
        body = json.dumps({"username": username, "password": password}).encode()
        status, raw, _, why = self._call(url, body, "application/json", auth=False)
        if status is None:
            raise BhtomError(f"BHTOM authentication failed: {why}")
        reason, parsed = _reason(raw, status)
        if status != 200 or not isinstance(parsed, dict) or not parsed.get("token"):
            raise BhtomError(f"BHTOM authentication failed (HTTP {status}): {reason}")
        self.config.token = Secret(parsed["token"])
        log.info("BHTOM token obtained for user %s", username)
        return self.config.token

    def upload(self, path, *, target: str, observatory: str, filter: str = "GaiaSP/any",
               data_product_type: str | None = None, dry_run: bool = False,
               mjd: float | None = None, observer: str | None = None,
               match_dist: float | None = None, comment: str | None = None,
               priority: int | None = None, no_plot: bool | None = None,
               file_field: str = "files") -> UploadResult:
        """Upload one file (``POST /upload/``); only HTTP 201 counts as sent.

        A file the server cannot take (wrong type, no MJD) raises ``BhtomError``;
        a refusal or an exhausted retry is a failed result with the reason."""
        self.require_token()
        path = Path(path)
        if not path.is_file():
            raise BhtomError(f"{path} is not a file")
        kind = data_product_type or product_type(path)
        if kind not in PRODUCT_TYPES:
            raise BhtomError(f"unknown data product type '{kind}'; one of "
                             f"{', '.join(PRODUCT_TYPES)}")
        if kind == "photometry" and mjd is None:
            raise BhtomError(f"{path.name}: a SExtractor-format upload needs the frame's MJD")
        fields = {"target": target, "data_product_type": kind, "observatory": observatory,
                  "filter": filter, "dry_run": "True" if dry_run else "False"}
        optional = {"mjd": None if mjd is None else f"{float(mjd):.6f}", "observer": observer,
                    "match_dist": None if match_dist is None else f"{float(match_dist):g}",
                    "comment": comment, "priority": None if priority is None else str(priority),
                    "no_plot": None if no_plot is None else ("True" if no_plot else "False")}
        fields.update({k: v for k, v in optional.items() if v is not None})
        body, ctype = encode_multipart(fields, file_field, path)
        url = self.config.upload_url.rstrip("/") + "/upload/"
        log.info("uploading %s (%s, target %s, dry run %s)", path.name, kind, target, dry_run)
        status, raw, attempts, why = self._call(url, body, ctype)
        reason, parsed = _reason(raw, status)
        ok = status == SENT_STATUS
        if status is None or status >= 500:
            reason = why
        elif not ok and status < 300:
            reason = f"HTTP {status}, not {SENT_STATUS}: not counted as sent ({reason})"
        if not ok:
            log.warning("upload of %s failed (HTTP %s): %s", path.name, status, reason)
        return UploadResult(path=path, ok=ok, status=status, reason="" if ok else reason,
                            body=parsed, fields=fields, attempts=attempts)

    def upload_many(self, paths: Iterable, *, move: bool = False,
                    mjd: float | Callable[[Path], float | None] | None = None,
                    on_result: Callable[[UploadResult], None] | None = None, **kwargs
                    ) -> list[UploadResult]:
        """Upload files one by one and return one result per file (the summary).

        ``mjd`` may be a function of the path (each frame's own MJD). With ``move``,
        answered files go to ``success/`` or ``error/`` beside them (the old scripts'
        convention). When BHTOM never answers a file, the rest are not tried (and
        not moved): retrying each against a dead link would only multiply the wait."""
        self.require_token()
        results: list[UploadResult] = []
        gave_up = ""
        for path in map(Path, paths):
            if gave_up:
                result = UploadResult(path=path, ok=False, status=None, reason=gave_up)
            else:
                try:
                    result = self.upload(path, mjd=mjd(path) if callable(mjd) else mjd,
                                         **kwargs)
                except BhtomError as exc:                 # unusable file: nothing sent
                    result = UploadResult(path=path, ok=False, status=None, reason=str(exc))
                if result.status is None and result.attempts:
                    gave_up = f"not tried: BHTOM did not answer for {path.name}"
                elif move and path.is_file():
                    folder = path.parent / ("success" if result.ok else "error")
                    folder.mkdir(exist_ok=True)
                    result.moved_to = Path(shutil.move(str(path), folder / path.name))
            results.append(result)
            if on_result:
                on_result(result)
        return results

    def calibration_results(self, filenames: list[str] | None = None,
                            calib_ids: list[int] | None = None) -> Any:
        """``POST /calibration/get-calibration-res/`` for uploaded files or calibration ids."""
        payload = {"filename": filenames} if filenames else {"calibid": calib_ids or []}
        url = self.config.api_url.rstrip("/") + "/calibration/get-calibration-res/"
        status, raw, _, why = self._call(url, json.dumps(payload).encode(),
                                         "application/json")
        if status is None:
            raise BhtomError(f"calibration results request failed: {why}")
        reason, parsed = _reason(raw, status)
        if status not in API_OK_STATUS:
            raise BhtomError(f"calibration results request failed (HTTP {status}): {reason}")
        return parsed
