"""The registry: the repository's obs.info files, the database, migrations and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlmodel import SQLModel
from typer.testing import CliRunner

from bhcore.errors import ObsInfoError, RegistryError, UnknownObservatory
from bhcore.registry import (Registry, builtin_dir, default_home, default_url, format_obsinfo,
                             make_engine, parse_obsinfo, read_obsinfo, settings_from_obsinfo)
from bhcore.registry.db import MIGRATIONS, applied_migrations, m001_create_tables, migrate
from bhcore.registry.obsinfo import obsinfo_filename

from test_obsinfo import TEMPLATE_2020, seed_obsinfo

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_DIR = ROOT / "registry"
FILES = sorted(REGISTRY_DIR.glob("*_obs.info"))
GOCHILE = REGISTRY_DIR / "GoChile-GoT1_ASI6200_obs.info"
LIST_KEYS = {"oname", "observatory", "lon_east_deg", "lat_deg", "alt_m", "gain",
             "read_noise_adu", "saturation", "description", "backends"}


@pytest.fixture
def registry() -> Registry:
    return Registry("sqlite://")


@pytest.fixture
def full_registry(registry) -> Registry:
    assert len(registry.ensure_builtin(REGISTRY_DIR)) == len(FILES)
    return registry


def write(folder: Path, name: str, text_: str) -> Path:
    path = folder / name
    path.write_text(text_, encoding="utf-8")
    return path


# --- the repository's registry/ folder --------------------------------------------------------
def test_registry_folder_has_every_listed_observatory():
    assert len(FILES) >= 55
    assert (REGISTRY_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_registry_file_round_trips(path):
    payload = path.read_bytes()
    info = read_obsinfo(path)
    assert format_obsinfo(info).encode(info.encoding) == payload
    assert parse_obsinfo(format_obsinfo(info), path=path) == info
    obs = settings_from_obsinfo(info)
    assert path.name == obsinfo_filename(obs.oname)
    assert obs.lat_deg is not None and -90 <= obs.lat_deg <= 90
    assert obs.lon_east_deg is not None and -180 < obs.lon_east_deg <= 180


def test_gochile_file_is_the_seed_verbatim_plus_pipeline_section():
    body = GOCHILE.read_text(encoding="utf-8")
    assert body.startswith(seed_obsinfo())
    rest = body[len(seed_obsinfo()):]
    assert rest.startswith("#\tPIPELINE (bhcore)")
    assert "\t: ONAME\t: str\t: GoChile-GoT1_ASI6200\t:" in rest


def test_template_files_have_every_standard_keyword():
    for path in FILES:
        if path == GOCHILE:              # the seed's file is kept verbatim, with its gaps
            continue
        assert read_obsinfo(path).missing_keywords() == [], path.name


# --- Registry ----------------------------------------------------------------------------------
def test_builtin_import_lists_every_camera(full_registry):
    rows = full_registry.list()
    assert len(rows) == len(FILES) >= 55
    assert all(LIST_KEYS <= set(row) for row in rows)
    assert [r["oname"] for r in rows] == sorted(r["oname"] for r in rows)
    by_name = {r["oname"]: r for r in rows}
    go = by_name["GoChile-GoT1_ASI6200"]
    assert go["observatory"] == "GoChile-GoT1"
    assert go["lon_east_deg"] == pytest.approx(-70.7631)
    assert (go["lat_deg"], go["alt_m"], go["read_noise_adu"], go["saturation"]) == \
        (pytest.approx(-30.4725), 1560.0, 14.0, 62000.0)
    assert go["filters"] == ["B", "V", "R", "I", "G"]
    assert go["backends"]["astrometry"] == ["astrometry_scamp", "astrometry_nova"]
    assert by_name["Adyu60_Andor-934"]["lon_east_deg"] == pytest.approx(38.22541)
    assert full_registry.ensure_builtin(REGISTRY_DIR) == []        # not empty: no-op


def test_get_resolves_settings(full_registry):
    go = full_registry.get("GoChile-GoT1_ASI6200")
    assert go.oname == "GoChile-GoT1_ASI6200"
    assert (go.lon_east_deg, go.lat_deg, go.alt_m) == (
        pytest.approx(-70.7631), pytest.approx(-30.4725), pytest.approx(1560.0))
    assert go.read_noise_adu == 14.0 and go.saturation == 62000
    assert go.translate("FILTER", "Ha03") == "R" and go.translate("FILTER", "DARK") == "G"
    assert go.translate("FILTER", " i ") == "I"
    adyu = full_registry.get("Adyu60_Andor-934")
    assert adyu.lon_east_deg == pytest.approx(38.22541)
    assert adyu.obsinfo.literal("LONGITUD") == "321.77459"
    assert adyu.read_noise_adu == pytest.approx(1.0)        # 2 e- / 2 e/ADU


def test_export_is_the_exact_original_text(full_registry):
    for path in FILES:
        oname = settings_from_obsinfo(read_obsinfo(path)).oname
        assert full_registry.export(oname) == path.read_text(encoding="utf-8"), path.name


def test_unknown_oname_suggests_near_matches(full_registry):
    with pytest.raises(UnknownObservatory, match="did you mean: GoChile-GoT1_ASI6200"):
        full_registry.get("gochile-got1_asi6200")
    with pytest.raises(UnknownObservatory, match="SOLARIS1_ANDOR-939"):
        full_registry.export("SOLARIS1_ANDOR939")
    with pytest.raises(UnknownObservatory, match="registry is empty"):
        Registry("sqlite://").get("ANY")


def test_add_replace_and_no_replace(registry, tmp_path):
    path = write(tmp_path, "OAN-SPM_Marconi_obs.info", TEMPLATE_2020)
    assert registry.add_obsinfo(path) == "OAN-SPM_Marconi"
    assert registry.get("OAN-SPM_Marconi").lon_east_deg == pytest.approx(-115.46666667)
    changed = TEMPLATE_2020.replace("115.46666667", "115.5")
    with pytest.raises(RegistryError, match="already registered"):
        registry.add_obsinfo(write(tmp_path, "OAN-SPM_Marconi_obs.info", changed), replace=False)
    assert registry.export("OAN-SPM_Marconi") == TEMPLATE_2020
    registry.add_obsinfo(write(tmp_path, "OAN-SPM_Marconi_obs.info", changed))
    assert registry.export("OAN-SPM_Marconi") == changed
    rows = registry.list()
    assert len(rows) == 1 and rows[0]["lon_east_deg"] == pytest.approx(-115.5)
    with registry.engine.connect() as conn:   # the old site row went with its last camera
        assert conn.execute(text("select count(*) from observatory")).scalar() == 1
    registry.remove("OAN-SPM_Marconi")
    assert registry.list() == []


def test_add_text_needs_an_oname(registry):
    with pytest.raises(RegistryError, match="no ONAME"):
        registry.add_obsinfo(TEMPLATE_2020)
    text_ = TEMPLATE_2020 + "  Prefix : - : ONAME : str : SPM_M3 : BHTOM prefix : F\n"
    assert registry.add_obsinfo(text_) == "SPM_M3"
    assert registry.get("SPM_M3").obsinfo.path == "<registry:SPM_M3>"


def test_import_dir_reports_every_failing_file(registry, tmp_path):
    write(tmp_path, "A_CAM_obs.info", TEMPLATE_2020)
    write(tmp_path, "B_CAM_obs.info", TEMPLATE_2020.replace("9.00 ", "9.x "))
    write(tmp_path, "C_CAM_obs.info", TEMPLATE_2020.replace(": F\n", ": F : G\n", 1))
    write(tmp_path, "D_CAM_obs.info", TEMPLATE_2020)
    write(tmp_path, "notes.txt", "not an obs.info")
    with pytest.raises(RegistryError) as caught:
        registry.import_dir(tmp_path)
    err = caught.value
    assert "2 of 4 obs.info files" in str(err)
    assert "B_CAM_obs.info:11: field 'VALUE(S)'" in str(err)
    assert "C_CAM_obs.info:2: field 'field count'" in str(err)
    assert err.imported == ["A_CAM", "D_CAM"]
    assert [type(e) for e in err.errors] == [ObsInfoError, ObsInfoError]
    assert registry.onames() == ["A_CAM", "D_CAM"]
    assert registry.import_dir(tmp_path, strict=False) == ["A_CAM", "D_CAM"]


def test_import_dir_rejects_duplicate_onames(registry, tmp_path):
    oname_line = "  Prefix : - : ONAME : str : SAME : BHTOM prefix : F\n"
    write(tmp_path, "A_obs.info", TEMPLATE_2020 + oname_line)
    write(tmp_path, "B_obs.info", TEMPLATE_2020 + oname_line)
    with pytest.raises(RegistryError, match="ONAME SAME is also defined by A_obs.info"):
        registry.import_dir(tmp_path)


def test_backends_are_stored_in_fallback_order(registry):
    text_ = (TEMPLATE_2020 + "# PIPELINE (bhcore)\n"
             "  Prefix : - : ONAME : str : ORD_CAM : BHTOM prefix : F\n"
             "  Astrometry : - : BH_ASTROM : str : astrometry_nova, astrometry_scamp : x : F\n"
             "  Options : - : BH_OPTS : str : phot_python.fwhm=3.0 : x : F\n")
    registry.add_obsinfo(text_)
    row = registry.list()[0]
    assert row["backends"]["astrometry"] == ["astrometry_nova", "astrometry_scamp"]
    assert row["backends"]["photometry"] == ["phot_python"]
    assert row["settings"] == {"phot_python.fwhm": 3.0}
    obs = registry.get("ORD_CAM")
    assert obs.backends_for("astrometry") == ("astrometry_nova", "astrometry_scamp")
    assert obs.plugin_settings["phot_python.fwhm"] == 3.0


# --- engine, locations, migrations -------------------------------------------------------------
def test_default_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("BHCORE_HOME", str(tmp_path / "home"))
    assert default_home() == tmp_path / "home"
    assert default_url() == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    monkeypatch.setenv("BHCORE_REGISTRY_URL", "sqlite://")
    assert default_url() == "sqlite://"
    monkeypatch.delenv("BHCORE_HOME")
    assert default_home() == Path.home() / ".local" / "share" / "bhcore"
    assert builtin_dir() == REGISTRY_DIR
    monkeypatch.setenv("BHCORE_REGISTRY_DIR", str(tmp_path))
    assert builtin_dir() == tmp_path


def test_default_registry_is_a_file_under_bhcore_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BHCORE_HOME", str(tmp_path / "h"))
    registry = Registry()
    registry.add_obsinfo(write(tmp_path, "F_CAM_obs.info", TEMPLATE_2020))
    assert (tmp_path / "h" / "registry.db").is_file()
    assert Registry().onames() == ["F_CAM"]              # a second process sees it


def test_bad_url_is_a_registry_error():
    with pytest.raises(RegistryError, match="bad registry URL"):
        make_engine("nosuchdialect://x")


def test_migrations_recorded_and_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url)
    names = [name for name, _ in MIGRATIONS]
    assert len(names) >= 2 and len(set(names)) == len(names)
    assert migrate(engine) == names
    assert migrate(engine) == []
    assert applied_migrations(engine) == names
    Registry(url)                                         # re-opening applies nothing new
    with engine.connect() as conn:
        rows = conn.execute(text("select name, applied_at from schema_migration")).all()
    assert [r[0] for r in rows] == names and all(r[1] for r in rows)


def test_migrated_schema_matches_the_models(registry):
    insp = inspect(registry.engine)
    for table in SQLModel.metadata.sorted_tables:
        assert {c.name for c in table.columns} == \
            {c["name"] for c in insp.get_columns(table.name)}, table.name
        assert {i.name for i in table.indexes} == \
            {i["name"] for i in insp.get_indexes(table.name)}, table.name


def test_old_database_is_upgraded_keeping_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:                          # a database made before m002
        m001_create_tables(conn)
        conn.execute(text("insert into observatory (name, description) values ('S', '')"))
        conn.execute(text("insert into camera (oname, observatory_id, obsinfo_text, description,"
                          " filters, settings_json) values ('OLD_CAM', 1, :t, '', '[]', '{}')"),
                     {"t": TEMPLATE_2020})
    registry = Registry(url)                              # no record: every step re-checks
    assert applied_migrations(registry.engine) == [name for name, _ in MIGRATIONS]
    assert "source_path" in {c["name"] for c in inspect(registry.engine).get_columns("camera")}
    assert registry.export("OLD_CAM") == TEMPLATE_2020


# --- CLI ------------------------------------------------------------------------------------------
@pytest.fixture
def cli(tmp_path):
    from bhcore.cli.registry_cmd import app
    runner = CliRunner(env={"BHCORE_REGISTRY_URL": f"sqlite:///{tmp_path / 'cli.db'}",
                            "BHCORE_REGISTRY_DIR": str(REGISTRY_DIR), "COLUMNS": "160"})
    return lambda *args: runner.invoke(app, list(args))


def test_cli_list_json_keys(cli):
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len(FILES) >= 55
    assert all(LIST_KEYS <= set(row) for row in rows)
    go = next(r for r in rows if r["oname"] == "GoChile-GoT1_ASI6200")
    assert go["lon_east_deg"] == pytest.approx(-70.7631)


def test_cli_list_table_show_export(cli, tmp_path):
    table = cli("list")
    assert table.exit_code == 0
    row = next(line for line in table.stdout.splitlines() if "GoChile-GoT1_ASI6200" in line)
    assert row.split()[1:6] == ["GoChile-GoT1", "-70.7631", "-30.4725", "1560", "-"]
    shown = cli("show", "GoChile-GoT1_ASI6200")
    assert shown.exit_code == 0
    assert "-70.7631" in shown.stdout and "Ha03->R" in shown.stdout
    out = tmp_path / "go_obs.info"
    assert cli("export", "GoChile-GoT1_ASI6200", "--out", str(out)).exit_code == 0
    assert out.read_bytes() == GOCHILE.read_bytes()
    printed = cli("export", "Adyu60_Andor-934")
    assert printed.stdout == (REGISTRY_DIR / "Adyu60_Andor-934_obs.info").read_text("utf-8")
    missing = cli("show", "NOPE_CAM")
    assert missing.exit_code == 1 and isinstance(missing.exception, UnknownObservatory)


def test_cli_add_import_validate(cli, tmp_path):
    good = write(tmp_path, "NEW_CAM_obs.info", TEMPLATE_2020)
    (tmp_path / "bad").mkdir()
    bad = write(tmp_path / "bad", "BAD_CAM_obs.info",
                TEMPLATE_2020.replace("int   :  32000", "int   :  32k"))
    ok = cli("validate", str(good))
    assert ok.exit_code == 0 and "OK" in ok.stdout and "no line for" in ok.stdout
    failed = cli("validate", str(bad))
    assert failed.exit_code == 1 and isinstance(failed.exception, ObsInfoError)
    assert failed.exception.line == 13 and failed.exception.field == "VALUE(S)"
    assert "BAD_CAM_obs.info:13" in failed.stderr
    assert cli("add", str(good)).stdout.strip() == "added NEW_CAM"
    imported = cli("import", str(tmp_path / "bad"))
    assert imported.exit_code == 1 and "BAD_CAM_obs.info:13" in imported.stderr
    listed = json.loads(cli("list", "--json").stdout)
    onames = [r["oname"] for r in listed]   # built-ins missing from the registry are added
    assert "NEW_CAM" in onames and "GoChile-GoT1_ASI6200" in onames


def test_main_cli_prints_one_line_and_exits_1(tmp_path, monkeypatch):
    main = pytest.importorskip("bhcore.cli.main")
    bad = write(tmp_path, "X_obs.info", "  Gain : - : GAIN : float : 2.0 : e/ADU\n")
    result = CliRunner().invoke(main.app, ["registry", "validate", str(bad)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "error: " in result.stderr and "X_obs.info:1: field 'field count'" in result.stderr


def test_builtin_sync_adds_new_and_follows_edited_files_but_keeps_user_entries(
        registry, tmp_path):
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    gochile = builtin / "GoChile-GoT1_ASI6200_obs.info"
    gochile.write_text((builtin_dir() / gochile.name).read_text())
    assert registry.ensure_builtin(builtin) == ["GoChile-GoT1_ASI6200"]
    assert registry.ensure_builtin(builtin) == []                 # nothing changed

    feder = builtin / "Feder0.4_AspenCG16_obs.info"              # a camera added later
    feder.write_text((builtin_dir() / feder.name).read_text())
    assert registry.ensure_builtin(builtin) == ["Feder0.4_AspenCG16"]

    gochile.write_text(gochile.read_text().replace(": 62000", ": 61000"))  # file edited
    assert registry.ensure_builtin(builtin) == ["GoChile-GoT1_ASI6200"]
    assert registry.get("GoChile-GoT1_ASI6200").saturation == 61000

    mine = tmp_path / "mine" / feder.name                         # the user's own version
    mine.parent.mkdir()
    mine.write_text(feder.read_text().replace(": 60000", ": 50000"))
    registry.add_obsinfo(mine)
    feder.write_text(feder.read_text() + "# a note\n")
    assert registry.ensure_builtin(builtin) == []
    assert registry.get("Feder0.4_AspenCG16").saturation == 50000


def _open_and_fill(url: str):
    from bhcore.registry import Registry
    registry = Registry(url)
    registry.ensure_builtin()
    return registry.count()


def test_processes_opening_a_new_registry_at_once_all_succeed(tmp_path):
    """Parallel workers may be the first users of a registry: no migration race."""
    from concurrent.futures import ProcessPoolExecutor
    for k in range(3):
        url = f"sqlite:///{tmp_path}/first-use-{k}.db"
        with ProcessPoolExecutor(4) as pool:
            counts = list(pool.map(_open_and_fill, [url] * 4))
        assert len(set(counts)) == 1 and counts[0] >= 70, counts
