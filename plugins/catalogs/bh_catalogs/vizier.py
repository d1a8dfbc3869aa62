"""Catalogue backend 'vizier': URAT-1, UCAC-4, NOMAD-1, 2MASS and APASS through astroquery.

Ask for ``name='vizier'`` (the catalogue from the setting ``vizier_catalog``) or
``name='vizier:ucac4'``. Each catalogue's VizieR columns are mapped to the bhcore
scheme below, with its own positional epoch. ``vizier_server`` may be a mirror
host name or a full ``http://`` base URL (used by the tests' local server).
Answers are cached like every remote answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.table import Table
from astropy.time import Time

from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo

from . import __version__
from .common import (CatalogSettings, CatalogUnavailable, brightest, cached_query,
                     describe_cone, propagate, settings_of)

NAME = "vizier"


@dataclass(frozen=True)
class VizierCatalog:
    """How one VizieR table maps to the bhcore columns."""

    table: str
    title: str
    mag_band: str
    columns: dict = field(default_factory=dict)     # bhcore name -> VizieR column
    ref_epoch: float | str = 2000.0                 # a number, or the epoch column
    position_err: tuple = ()                        # (column, unit) per axis or one for both


APASS_MAGS = {"B": "Bmag", "V": "Vmag", "sdss_g": "gmag", "sdss_r": "rmag", "sdss_i": "imag"}
TWOMASS = {"J": "Jmag", "H": "Hmag", "Ks": "Kmag"}


def _with_errors(mags: dict) -> dict:
    out = dict(mags)
    out.update({f"{band}_err": f"e_{col}" for band, col in mags.items()})
    return out


CATALOGS = {
    "urat1": VizierCatalog(
        "I/329/urat1", "URAT-1", "urat_f",
        {"source_id": "URAT1", "ra": "RAJ2000", "dec": "DEJ2000", "pmra": "pmRA",
         "pmdec": "pmDE", "pmra_err": "e_pm", "pmdec_err": "e_pm",
         **_with_errors({"urat_f": "f.mag", **APASS_MAGS}), **TWOMASS},
        ref_epoch="Epoch", position_err=(("sigs", u.mas),)),
    "ucac4": VizierCatalog(
        "I/322A/out", "UCAC-4", "ucac_f",
        {"source_id": "UCAC4", "ra": "RAJ2000", "dec": "DEJ2000", "pmra": "pmRA",
         "pmdec": "pmDE", "pmra_err": "e_pmRA", "pmdec_err": "e_pmDE",
         **_with_errors({"ucac_f": "f.mag", **APASS_MAGS, **TWOMASS})},
        ref_epoch=2000.0, position_err=(("ePos", u.mas),)),
    "nomad1": VizierCatalog(
        "I/297/out", "NOMAD-1", "nomad_V",
        {"source_id": "NOMAD1", "ra": "RAJ2000", "dec": "DEJ2000", "pmra": "pmRA",
         "pmdec": "pmDE", "pmra_err": "e_pmRA", "pmdec_err": "e_pmDE",
         "nomad_B": "Bmag", "nomad_V": "Vmag", "nomad_R": "Rmag", **TWOMASS},
        ref_epoch=2000.0, position_err=(("e_RAJ2000", u.mas), ("e_DEJ2000", u.mas))),
    "2mass": VizierCatalog(
        "II/246/out", "2MASS PSC", "J",
        {"source_id": "2MASS", "ra": "RAJ2000", "dec": "DEJ2000", **_with_errors(TWOMASS)},
        ref_epoch="JD", position_err=(("errMaj", u.arcsec),)),
    "apass": VizierCatalog(
        "II/336/apass9", "APASS DR9", "V",
        {"ra": "RAJ2000", "dec": "DEJ2000",
         **_with_errors({"B": "Bmag", "V": "Vmag", "sdss_g": "g'mag", "sdss_r": "r'mag",
                         "sdss_i": "i'mag"})},
        ref_epoch=2000.0, position_err=(("e_RAJ2000", u.arcsec), ("e_DEJ2000", u.arcsec))),
}


class Settings(CatalogSettings):
    """VizieR query settings."""

    vizier_catalog: str = "ucac4"
    vizier_server: str = "vizier.cds.unistra.fr"


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="catalog", version=__version__,
        description="VizieR: URAT-1, UCAC-4, NOMAD-1, 2MASS, APASS (astroquery), cached",
        settings_model=Settings, extra={"catalogs": sorted(CATALOGS)})


def _client(s: Settings, columns):
    """An astroquery Vizier client; a full http:// server URL is used as given."""
    from astroquery.vizier import VizierClass

    class _Client(VizierClass):
        def _server_to_url(self, return_type="votable"):
            if s.vizier_server.startswith(("http://", "https://")):
                return s.vizier_server.rstrip("/") + "/viz-bin/" + return_type
            return super()._server_to_url(return_type=return_type)

    server = s.vizier_server.split("://", 1)[-1].split("/", 1)[0]
    return _Client(columns=list(columns), row_limit=int(s.row_limit), timeout=s.timeout_s,
                   vizier_server=server)


def query(cat: VizierCatalog, center, radius_deg: float, s: Settings) -> Table:
    columns = ["*"] + sorted({c for c in cat.columns.values()}
                             | {c for c, _u in cat.position_err}
                             | ({cat.ref_epoch} if isinstance(cat.ref_epoch, str) else set()))
    try:
        result = _client(s, columns).query_region(center, radius=radius_deg * u.deg,
                                                  catalog=cat.table, cache=False)
    except Exception as exc:
        raise CatalogUnavailable(f"vizier: {cat.title} query failed for "
                                 f"{describe_cone(center, radius_deg)} ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from None
    tables = [t for key, t in zip(result.keys(), result.values()) if key == cat.table] \
        or list(result.values())
    raw = tables[0] if tables else Table()
    if len(raw) >= s.row_limit:
        raise CatalogUnavailable(f"vizier: {cat.title} cone {describe_cone(center, radius_deg)}"
                                 f" hit the row limit ({s.row_limit})")
    return normalise(cat, raw)


def normalise(cat: VizierCatalog, raw: Table) -> Table:
    """VizieR columns -> bhcore columns (missing ones simply stay absent)."""
    n = len(raw)
    table = Table()
    for std, col in cat.columns.items():
        if col not in raw.colnames:
            continue
        if std == "source_id":
            table[std] = np.asarray(raw[col]).astype(str)
        else:
            table[std] = np.ma.filled(np.ma.asarray(raw[col], dtype=float), np.nan)
    if "ra" not in table.colnames:
        raise CatalogUnavailable(f"vizier: {cat.title} answer has no {cat.columns['ra']} column")
    if isinstance(cat.ref_epoch, str) and cat.ref_epoch in raw.colnames:
        values = np.ma.filled(np.ma.asarray(raw[cat.ref_epoch], dtype=float), np.nan)
        table["ref_epoch"] = Time(values, format="jd").jyear if cat.ref_epoch == "JD" else values
    else:
        table["ref_epoch"] = np.full(n, 2000.0 if isinstance(cat.ref_epoch, str)
                                     else float(cat.ref_epoch))
    errs = [(raw[c], unit) for c, unit in cat.position_err if c in raw.colnames]
    if errs:
        values = [(np.ma.filled(np.ma.asarray(col, dtype=float), np.nan) * unit).to_value(u.mas)
                  for col, unit in errs]
        table["ra_err"], table["dec_err"] = values[0], values[-1]
    return table


def catalog_key(name: str, s: Settings) -> str:
    key = name.split(":", 1)[1] if ":" in name else s.vizier_catalog
    key = key.lower().replace("-", "")
    if key not in CATALOGS:
        raise CatalogUnavailable(f"vizier: unknown catalogue '{key}'; known: "
                                 f"{', '.join(sorted(CATALOGS))}")
    return key


@hookimpl
def bh_reference_catalog(name, center, radius_deg, epoch, settings):
    if name != NAME and not name.startswith(NAME + ":"):
        return None
    s = settings_of(Settings, settings)
    key = catalog_key(name, s)
    cat = CATALOGS[key]
    params = {"table": cat.table, "columns": sorted(cat.columns.items()),
              "row_limit": s.row_limit, "server": s.vizier_server, "version": 1}
    table = cached_query(f"vizier_{key}", params, center, radius_deg, s,
                         lambda c, r: query(cat, c, r, s), label=f"vizier {cat.title}")
    if s.mag_limit is not None and cat.mag_band in table.colnames:
        table = table[~(np.asarray(table[cat.mag_band]) > s.mag_limit)]
    table = brightest(propagate(table, epoch), cat.mag_band, 0)
    table.meta.update(catalog=cat.title, backend=NAME, vizier_table=cat.table,
                      mag_band=cat.mag_band, radius_deg=float(radius_deg),
                      ra_center=float(center.icrs.ra.deg), dec_center=float(center.icrs.dec.deg))
    return table
