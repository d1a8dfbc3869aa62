"""The registry database: engine factory, named migrations, and the ``Registry`` API.

There is no global engine: every ``Registry`` makes its own from a URL (tests use
``sqlite://``, in memory). The schema evolves through an ordered list of small named
functions, each recorded in ``schema_migration`` once applied (the approach of
``llm``); every migration is also safe to re-run on a database that already has its
change, so a half-migrated or hand-made database converges.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import (Column, DateTime, Float, ForeignKey, Index, Integer, MetaData,
                        String, Table, Text, func, inspect, text)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import Session, delete, select

import bhcore
from bhcore.dbengine import exclusive, open_engine
from bhcore.errors import BhError, RegistryError, UnknownObservatory
from bhcore.registry.models import Camera, CameraBackend, Observatory, SchemaMigration
from bhcore.registry.obsinfo import ObsInfo, parse_obsinfo, read_obsinfo, settings_from_obsinfo
from bhcore.registry.settings import ObservatorySettings

log = logging.getLogger(__name__)


# --- locations ---------------------------------------------------------------------------
def default_home() -> Path:
    """``$BHCORE_HOME``, else ``~/.local/share/bhcore``."""
    home = os.environ.get("BHCORE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".local" / "share" / "bhcore"


def default_url() -> str:
    """``$BHCORE_REGISTRY_URL``, else ``sqlite:///$BHCORE_HOME/registry.db``."""
    return os.environ.get("BHCORE_REGISTRY_URL") or f"sqlite:///{default_home() / 'registry.db'}"


def builtin_dir() -> Path:
    """The repository's ``registry/`` folder (``$BHCORE_REGISTRY_DIR`` overrides)."""
    override = os.environ.get("BHCORE_REGISTRY_DIR")
    if override:
        return Path(override).expanduser()
    return Path(bhcore.__file__).resolve().parents[1] / "registry"


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; in-memory SQLite keeps one shared connection."""
    try:
        return open_engine(url)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise RegistryError(f"bad registry URL {_safe(url)}: {exc}") from None
    except OSError as exc:
        raise RegistryError(f"cannot create the registry folder for {_safe(url)}: {exc}") from None


# --- migrations --------------------------------------------------------------------------
MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = []


def migration(func_: Callable[[Connection], None]):
    """Append a migration; its function name is its permanent record name."""
    MIGRATIONS.append((func_.__name__, func_))
    return func_


@migration
def m001_create_tables(conn: Connection) -> None:
    """Observatory, camera (first shape) and camera_backend tables."""
    meta = MetaData()
    Table("observatory", meta,
          Column("id", Integer, primary_key=True),
          Column("name", String, nullable=False, index=True),
          Column("lon_east_deg", Float), Column("lat_deg", Float), Column("alt_m", Float),
          Column("description", String, nullable=False))
    Table("camera", meta,
          Column("id", Integer, primary_key=True),
          Column("oname", String, nullable=False, unique=True, index=True),
          Column("observatory_id", Integer, ForeignKey("observatory.id"), index=True),
          Column("obsinfo_text", Text, nullable=False),
          Column("instrument", String), Column("telescope", String),
          Column("description", String, nullable=False),
          Column("gain", Float), Column("read_noise_adu", Float), Column("saturation", Float),
          Column("pixel_scale_arcsec", Float), Column("pixel_size_um", Float),
          Column("binning", Integer), Column("maglimit", Float),
          Column("filters", String, nullable=False),
          Column("settings_json", String, nullable=False))
    Table("camera_backend", meta,
          Column("id", Integer, primary_key=True),
          Column("camera_id", Integer, ForeignKey("camera.id"), nullable=False, index=True),
          Column("stage", String, nullable=False),
          Column("position", Integer, nullable=False),
          Column("backend", String, nullable=False))
    meta.create_all(conn)  # checkfirst: existing tables are left alone


@migration
def m002_camera_provenance(conn: Connection) -> None:
    """Camera: where the obs.info came from and when it was stored."""
    present = {column["name"] for column in inspect(conn).get_columns("camera")}
    for name, type_ in (("source_path", String()), ("updated_at", DateTime())):
        if name not in present:
            _add_column(conn, "camera", name, type_)


def _add_column(conn: Connection, table: str, name: str, type_) -> None:
    """ALTER TABLE ADD COLUMN with the type spelled by this database's dialect
    (PostgreSQL has no DATETIME, it is TIMESTAMP there)."""
    spelled = type_.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {spelled}"))


@migration
def m003_camera_backend_order(conn: Connection) -> None:
    """One backend per (camera, stage, position): the fallback order is unambiguous."""
    table = Table("camera_backend", MetaData(), autoload_with=conn)
    Index("uq_camera_backend_position", table.c.camera_id, table.c.stage, table.c.position,
          unique=True).create(conn, checkfirst=True)


def _utcnow() -> datetime:
    """UTC as a naive datetime: the columns are TIMESTAMP WITHOUT TIME ZONE, and
    PostgreSQL would shift an aware value to the server's own time zone."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def applied_migrations(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        if not inspect(conn).has_table(SchemaMigration.__tablename__):
            return []
        rows = conn.execute(select(SchemaMigration.name)).scalars()
        return list(rows)


def migrate(engine: Engine) -> list[str]:
    """Apply the migrations not yet recorded, in order; returns the names applied now."""
    with engine.begin() as conn:
        SchemaMigration.__table__.create(conn, checkfirst=True)
    done = set(applied_migrations(engine))
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        with engine.begin() as conn:
            step(conn)
            conn.execute(SchemaMigration.__table__.insert().values(
                name=name, applied_at=_utcnow()))
        log.info("registry migration applied: %s", name)
        applied.append(name)
    return applied


# --- the registry ------------------------------------------------------------------------
def _float(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _summary(settings: ObservatorySettings) -> dict:
    """Searchable camera columns derived from an obs.info (camera mode 0)."""
    info: ObsInfo = settings.obsinfo
    scale = _float(settings.value("CDELT1"))
    binning = _float(settings.value("BIN"))
    filter_line = info.get("FILTER")
    filters: list[str] = []
    if filter_line is not None:
        for _raw, std in filter_line.translation_pairs():
            if std not in filters:
                filters.append(std)
    return dict(
        instrument=info.literal("INSTRUME"), telescope=info.literal("TELESCOP"),
        description=info.literal("DESCRIPT") or "",
        gain=_float(settings.value("GAIN")), read_noise_adu=_float(settings.value("RDNOISE")),
        saturation=_float(settings.value("SATURATE")),
        pixel_scale_arcsec=None if scale is None else abs(scale) * 3600.0,
        pixel_size_um=_float(settings.value("PIXSIZE1")),
        binning=None if binning is None else int(binning),
        maglimit=_float(settings.value("MAGLIMIT")),
        filters=json.dumps(filters),
        settings_json=json.dumps(dict(settings.plugin_settings), sort_keys=True))


class Registry:
    """Observatories and cameras, built from obs.info files; answers by ONAME."""

    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.engine = make_engine(self.url)
        try:
            with exclusive(self.engine):
                migrate(self.engine)
        except SQLAlchemyError as exc:
            raise RegistryError(f"cannot open the registry {_safe(self.url)}: "
                                f"{str(exc).splitlines()[0]}") from None

    def __repr__(self) -> str:
        return f"Registry({_safe(self.url)!r})"

    # --- writing ---------------------------------------------------------------------
    def add_obsinfo(self, source, replace: bool = True) -> str:
        """Store one obs.info (a path, or its text); returns its ONAME."""
        obsinfo = _load(source)
        settings = settings_from_obsinfo(obsinfo)
        oname = settings.oname
        try:
            with Session(self.engine) as session:
                camera = session.exec(select(Camera).where(Camera.oname == oname)).first()
                if camera is not None and not replace:
                    raise RegistryError(f"{oname} is already registered (replace it with "
                                        "'bhcore registry add')", path=obsinfo.path)
                old_site = camera.observatory_id if camera is not None else None
                site = _site(session, settings)
                if camera is None:
                    camera = Camera(oname=oname, obsinfo_text="")
                for key, value in _summary(settings).items():
                    setattr(camera, key, value)
                camera.obsinfo_text = obsinfo.text
                camera.observatory_id = site.id
                camera.source_path = obsinfo.path
                camera.updated_at = _utcnow()
                session.add(camera)
                session.flush()
                session.exec(delete(CameraBackend).where(CameraBackend.camera_id == camera.id))
                for stage, names in settings.backends.items():
                    for position, name in enumerate(names):
                        session.add(CameraBackend(camera_id=camera.id, stage=stage,
                                                  position=position, backend=name))
                session.flush()
                if old_site is not None and old_site != site.id:
                    _drop_if_empty(session, old_site)
                session.commit()
        except SQLAlchemyError as exc:
            raise RegistryError(f"cannot store {oname}: {str(exc).splitlines()[0]}") from None
        return oname

    def import_dir(self, directory, strict: bool = True) -> list[str]:
        """Add every ``*_obs.info`` of a folder; all failures are reported together.

        Good files are stored even when others fail. With ``strict`` the failures
        raise one ``RegistryError`` (its ``errors`` attribute lists them, ``imported``
        the ONAMEs stored); otherwise they are logged as warnings.
        """
        folder = Path(directory)
        if not folder.is_dir():
            raise RegistryError("not a folder", path=folder)
        files = sorted(folder.glob("*_obs.info"))
        names: list[str] = []
        origin: dict[str, Path] = {}
        errors: list[BhError] = []
        for path in files:
            try:
                obsinfo = read_obsinfo(path)
                oname = settings_from_obsinfo(obsinfo).oname
                if oname in origin:
                    raise RegistryError(f"ONAME {oname} is also defined by "
                                        f"{origin[oname].name}", path=path)
                origin[oname] = path
                names.append(self.add_obsinfo(obsinfo))
            except BhError as exc:
                errors.append(exc)
        if errors:
            if strict:
                err = RegistryError(f"{len(errors)} of {len(files)} obs.info files in {folder} "
                                    "failed: " + "; ".join(str(e) for e in errors))
                err.errors, err.imported = errors, names
                raise err
            for exc in errors:
                log.warning("registry: skipped %s", exc)
        return names

    def remove(self, oname: str) -> None:
        with Session(self.engine) as session:
            camera = self._camera(session, oname)
            session.exec(delete(CameraBackend).where(CameraBackend.camera_id == camera.id))
            site = camera.observatory_id
            session.delete(camera)
            session.flush()
            if site is not None:
                _drop_if_empty(session, site)
            session.commit()

    def ensure_builtin(self, directory=None) -> list[str]:
        """Add the repository's ``registry/`` entries that this registry lacks.

        An empty registry is filled; a filled one gains the built-in cameras added
        since and follows edits of built-in files, while entries the user added or
        replaced from elsewhere are kept as they are.
        """
        folder = Path(directory) if directory else builtin_dir()
        if not folder.is_dir():
            log.warning("registry: built-in folder %s is absent; registry stays empty", folder)
            return []
        with exclusive(self.engine, "seed"):        # two first uses must not both seed
            return self._ensure_builtin(folder)

    def _ensure_builtin(self, folder: Path) -> list[str]:
        if not self.count():
            return self.import_dir(folder, strict=False)
        with Session(self.engine) as session:
            known = {cam.oname: (cam.source_path, cam.obsinfo_text)
                     for cam in session.exec(select(Camera))}
        added = []
        for path in sorted(folder.glob("*_obs.info")):
            try:
                obsinfo = read_obsinfo(path)
                oname = settings_from_obsinfo(obsinfo).oname
                source, text_now = known.get(oname, (None, None))
                if oname not in known or (source == str(path) and text_now != obsinfo.text):
                    added.append(self.add_obsinfo(path))   # new, or a built-in file updated
            except BhError as exc:
                log.warning("registry: built-in entry skipped: %s", exc)
        return added

    # --- reading ---------------------------------------------------------------------
    def count(self) -> int:
        with Session(self.engine) as session:
            return session.exec(select(func.count()).select_from(Camera)).one()

    def onames(self) -> list[str]:
        """Sorted by code point in Python: a server's collation (PostgreSQL's en_US
        folds case and skips punctuation) must not change the order."""
        with Session(self.engine) as session:
            return sorted(session.exec(select(Camera.oname)))

    def list(self) -> list[dict]:
        """One summary dict per camera, sorted by ONAME (East-positive longitude)."""
        with Session(self.engine) as session:
            sites = {s.id: s for s in session.exec(select(Observatory))}
            backends: dict[int, dict[str, list[str]]] = {}
            rows = session.exec(select(CameraBackend).order_by(
                CameraBackend.camera_id, CameraBackend.stage, CameraBackend.position))
            for row in rows:
                backends.setdefault(row.camera_id, {}).setdefault(row.stage, []).append(
                    row.backend)
            out = []
            cameras = sorted(session.exec(select(Camera)), key=lambda c: c.oname)
            for cam in cameras:                 # sorted here, as in onames()
                site = sites.get(cam.observatory_id)
                out.append({
                    "oname": cam.oname,
                    "observatory": site.name if site else None,
                    "lon_east_deg": site.lon_east_deg if site else None,
                    "lat_deg": site.lat_deg if site else None,
                    "alt_m": site.alt_m if site else None,
                    "instrument": cam.instrument, "telescope": cam.telescope,
                    "gain": cam.gain, "read_noise_adu": cam.read_noise_adu,
                    "saturation": cam.saturation,
                    "pixel_scale_arcsec": cam.pixel_scale_arcsec,
                    "binning": cam.binning, "maglimit": cam.maglimit,
                    "filters": json.loads(cam.filters or "[]"),
                    "description": cam.description,
                    "backends": backends.get(cam.id, {}),
                    "settings": json.loads(cam.settings_json or "{}"),
                    "source_path": cam.source_path,
                })
            return out

    def get(self, oname: str) -> ObservatorySettings:
        """Resolved settings of one camera, parsed from its stored obs.info."""
        with Session(self.engine) as session:
            camera = self._camera(session, oname)
            text_, name = camera.obsinfo_text, camera.oname
            path = camera.source_path or f"<registry:{name}>"
        return settings_from_obsinfo(parse_obsinfo(text_, path=path), oname=name)

    def export(self, oname: str) -> str:
        """The obs.info text exactly as it was stored."""
        with Session(self.engine) as session:
            return self._camera(session, oname).obsinfo_text

    def _camera(self, session: Session, oname: str) -> Camera:
        camera = session.exec(select(Camera).where(Camera.oname == oname)).first()
        if camera is not None:
            return camera
        known = list(session.exec(select(Camera.oname)))
        folded = {name.casefold(): name for name in known}
        near = [folded[oname.casefold()]] if oname.casefold() in folded else []
        near += [n for n in difflib.get_close_matches(oname, known, n=5, cutoff=0.5)
                 if n not in near]
        hint = f"; did you mean: {', '.join(near)}?" if near else (
            "; the registry is empty (run 'bhcore registry import registry/')" if not known
            else "; 'bhcore registry list' shows the known ones")
        raise UnknownObservatory(f"unknown observatory (ONAME) '{oname}'{hint}")


def _load(source) -> ObsInfo:
    if isinstance(source, ObsInfo):
        return source
    if isinstance(source, Path):
        return read_obsinfo(source)
    if isinstance(source, str):
        if "\n" in source or "\r" in source:
            return parse_obsinfo(source)
        return read_obsinfo(Path(source))
    raise TypeError(f"expected a path, obs.info text or ObsInfo, not {type(source).__name__}")


def _site(session: Session, settings: ObservatorySettings) -> Observatory:
    """The observatory row for this camera's site (same name and coordinates), or a new one."""
    name = settings.observatory or settings.oname.split("_", 1)[0]
    lon, lat, alt = settings.lon_east_deg, settings.lat_deg, settings.alt_m
    lon = None if lon is None else round(lon, 9)

    def same(a, b, tol):
        return (a is None and b is None) or (a is not None and b is not None
                                             and abs(a - b) <= tol)

    for site in session.exec(select(Observatory).where(Observatory.name == name)):
        if same(site.lon_east_deg, lon, 1e-6) and same(site.lat_deg, lat, 1e-6) \
                and same(site.alt_m, alt, 0.5):
            return site
    site = Observatory(name=name, lon_east_deg=lon, lat_deg=lat, alt_m=alt,
                       description=settings.obsinfo.literal("DESCRIPT") or "")
    session.add(site)
    session.flush()
    return site


def _drop_if_empty(session: Session, site_id: int) -> None:
    used = session.exec(select(func.count()).select_from(Camera)
                        .where(Camera.observatory_id == site_id)).one()
    if not used:
        site = session.get(Observatory, site_id)
        if site is not None:
            session.delete(site)
