"""Catalogue backend 'gaia': Gaia DR3 from the Gaia archive's TAP service.

Positions, proper motions and parallaxes from ``gaiadr3.gaia_source``, joined with
the Gaia synthetic photometry catalogue (``gaiadr3.synthetic_photometry_gspc``:
Johnson-Kron-Cousins UBVRI and SDSS ugriz, present for G < ~17.65), propagated to
the frame epoch. Uses astroquery's TAP client (``TapPlus``) directly: importing
``astroquery.gaia`` contacts the archive at import time, which an offline run must
not do. Every answer is cached (see ``common.ConeCache``).
"""
from __future__ import annotations

import contextlib
import socket

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from bhcore.hookspecs import hookimpl
from bhcore.plugins import PluginInfo

from . import __version__
from .common import (MAG_ERR_PER_FLUX_ERR, CatalogSettings, CatalogUnavailable,
                     as_float, brightest, cached_query, describe_cone, propagate,
                     settings_of)

NAME = "gaia"
DEFAULT_TAP = "https://gea.esac.esa.int/tap-server/tap"
SOURCE_COLUMNS = ("source_id", "ra", "dec", "ra_error", "dec_error", "pmra", "pmdec",
                  "pmra_error", "pmdec_error", "parallax", "parallax_error", "ref_epoch",
                  "phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag",
                  "phot_g_mean_flux_over_error", "phot_bp_mean_flux_over_error",
                  "phot_rp_mean_flux_over_error", "ruwe")
GSPC_BANDS = {"U": "u_jkc", "B": "b_jkc", "V": "v_jkc", "R": "r_jkc", "I": "i_jkc",
              "sdss_u": "u_sdss", "sdss_g": "g_sdss", "sdss_r": "r_sdss",
              "sdss_i": "i_sdss", "sdss_z": "z_sdss"}
RENAME = {"ra_error": "ra_err", "dec_error": "dec_err", "pmra_error": "pmra_err",
          "pmdec_error": "pmdec_err", "parallax_error": "parallax_err",
          "phot_g_mean_mag": "G", "phot_bp_mean_mag": "BP", "phot_rp_mean_mag": "RP"}


class Settings(CatalogSettings):
    """Gaia DR3 query settings."""

    tap_url: str = DEFAULT_TAP
    source_table: str = "gaiadr3.gaia_source"
    synthetic_table: str = "gaiadr3.synthetic_photometry_gspc"
    synthetic_photometry: bool = True
    mag_limit: float | None = 19.0       # G


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="catalog", version=__version__,
        description="Gaia DR3 (archive TAP, with GSPC synthetic UBVRI/ugriz), cached",
        settings_model=Settings)


def adql(center: SkyCoord, radius_deg: float, s: Settings) -> str:
    """The ADQL cone query: every row of the cone, brightest first."""
    c = center.icrs
    cols = [f"g.{name}" for name in SOURCE_COLUMNS]
    join = ""
    if s.synthetic_photometry:
        for prefix in GSPC_BANDS.values():
            cols += [f"s.{prefix}_mag", f"s.{prefix}_flux", f"s.{prefix}_flux_error"]
        join = (f" LEFT OUTER JOIN {s.synthetic_table} AS s"
                " ON s.source_id = g.source_id")
    where = (f"1 = CONTAINS(POINT('ICRS', g.ra, g.dec), "
             f"CIRCLE('ICRS', {c.ra.deg:.6f}, {c.dec.deg:.6f}, {radius_deg:.5f}))")
    if s.mag_limit is not None:
        where += f" AND g.phot_g_mean_mag < {s.mag_limit:.2f}"
    return (f"SELECT TOP {int(s.row_limit)} {', '.join(cols)} "
            f"FROM {s.source_table} AS g{join} WHERE {where} "
            "ORDER BY g.phot_g_mean_mag")


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """astroquery's TAP client opens http.client connections without a timeout."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def run_query(query: str, s: Settings) -> Table:
    """Send ``query`` to the TAP service; wrap every failure in CatalogUnavailable."""
    from astroquery.utils.tap.core import TapPlus
    try:
        with _socket_timeout(s.timeout_s):
            tap = TapPlus(url=s.tap_url, verbose=False)
            job = tap.launch_job(query, output_format="votable", verbose=False)
            return job.get_results()
    except Exception as exc:  # network errors, HTTP errors, unparsable answers
        raise CatalogUnavailable(f"gaia: the TAP service at {s.tap_url} did not answer "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None


def normalise(raw: Table) -> Table:
    """Archive column names and fluxes -> the bhcore column scheme."""
    table = Table(raw, copy=True)
    table.meta = {}
    for old, new in RENAME.items():
        if old in table.colnames:
            table.rename_column(old, new)
    for band, key in (("G", "phot_g_mean_flux_over_error"), ("BP", "phot_bp_mean_flux_over_error"),
                      ("RP", "phot_rp_mean_flux_over_error")):
        if key in table.colnames:
            as_float(table, key)
            with np.errstate(divide="ignore", invalid="ignore"):
                table[f"{band}_err"] = MAG_ERR_PER_FLUX_ERR / np.asarray(table[key])
            table.remove_column(key)
    for band, prefix in GSPC_BANDS.items():
        mag, flux, err = f"{prefix}_mag", f"{prefix}_flux", f"{prefix}_flux_error"
        if mag not in table.colnames:
            continue
        as_float(table, mag)
        table.rename_column(mag, band)
        if flux in table.colnames and err in table.colnames:
            as_float(table, flux)
            as_float(table, err)
            with np.errstate(divide="ignore", invalid="ignore"):
                table[f"{band}_err"] = MAG_ERR_PER_FLUX_ERR * np.asarray(table[err]) \
                    / np.asarray(table[flux])
            table.remove_columns([flux, err])
    if "source_id" in table.colnames:
        table["source_id"] = np.asarray(table["source_id"], dtype=np.int64)
    return table


@hookimpl
def bh_reference_catalog(name, center, radius_deg, epoch, settings):
    if name != NAME:
        return None
    s = settings_of(Settings, settings)
    params = {"tap": s.tap_url, "table": s.source_table, "gspc": s.synthetic_photometry,
              "mag_limit": s.mag_limit, "row_limit": s.row_limit, "version": 1}

    def fetch(qcenter, qradius):
        raw = run_query(adql(qcenter, qradius, s), s)
        if len(raw) >= s.row_limit:
            raise CatalogUnavailable(
                f"gaia: the cone {describe_cone(qcenter, qradius)} hit the row limit "
                f"({s.row_limit}); lower mag_limit or raise row_limit")
        return normalise(raw)

    table = cached_query(NAME, params, center, radius_deg, s, fetch, label="gaia")
    table = propagate(table, epoch)
    table = brightest(table, "G", 0)
    table.meta.update(catalog="Gaia DR3", backend=NAME, mag_band="G",
                      radius_deg=float(radius_deg), ra_center=float(center.icrs.ra.deg),
                      dec_center=float(center.icrs.dec.deg))
    return table
