"""Re-create the hand-made service answers in this folder (run from the repo root).

They imitate the layout of real answers (a Gaia archive TAP sync VOTable; a VizieR
ASU VOTable for UCAC-4) with a few invented stars near RA 31.2, Dec +46.75: the
values are made up for the tests (one fast-moving star, one row without synthetic
photometry, one without a proper motion) and are not real measurements.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io.votable.tree import Field, Resource, TableElement, VOTableFile

HERE = Path(__file__).resolve().parent

GAIA_ROWS = [
    # source_id, ra, dec, ra_err, dec_err (mas), pmra, pmdec, pmra_err, pmdec_err (mas/yr),
    # parallax, parallax_err (mas), G, BP, RP, G/BP/RP flux over error, ruwe, V_jkc or None
    (900000000000000001, 31.20000, 46.75000, 0.02, 0.02, 1000.0, -500.0, 0.03, 0.03,
     50.0, 0.03, 9.50, 9.90, 8.95, 2000.0, 500.0, 600.0, 1.01, 9.70),
    (900000000000000002, 31.25000, 46.80000, 0.05, 0.04, 5.0, -3.0, 0.06, 0.05,
     1.2, 0.06, 13.20, 13.60, 12.60, 1500.0, 300.0, 350.0, 0.98, 13.40),
    (900000000000000003, 31.10000, 46.70000, 0.30, 0.25, np.nan, np.nan, np.nan, np.nan,
     np.nan, np.nan, 18.80, 19.30, 18.10, 100.0, 20.0, 25.0, np.nan, None),
]
GSPC = ("u_jkc", "b_jkc", "v_jkc", "r_jkc", "i_jkc", "u_sdss", "g_sdss", "r_sdss", "i_sdss",
        "z_sdss")


def gaia_votable() -> VOTableFile:
    vot = VOTableFile()
    resource = Resource()
    resource.type = "results"
    vot.resources.append(resource)
    table = TableElement(vot)
    resource.tables.append(table)
    fields = [("source_id", "long", None), ("ra", "double", "deg"), ("dec", "double", "deg"),
              ("ra_error", "float", "mas"), ("dec_error", "float", "mas"),
              ("pmra", "double", "mas.yr**-1"), ("pmdec", "double", "mas.yr**-1"),
              ("pmra_error", "float", "mas.yr**-1"), ("pmdec_error", "float", "mas.yr**-1"),
              ("parallax", "double", "mas"), ("parallax_error", "float", "mas"),
              ("ref_epoch", "double", "yr"), ("phot_g_mean_mag", "float", "mag"),
              ("phot_bp_mean_mag", "float", "mag"), ("phot_rp_mean_mag", "float", "mag"),
              ("phot_g_mean_flux_over_error", "float", None),
              ("phot_bp_mean_flux_over_error", "float", None),
              ("phot_rp_mean_flux_over_error", "float", None), ("ruwe", "float", None)]
    for prefix in GSPC:
        fields += [(f"{prefix}_mag", "float", "mag"), (f"{prefix}_flux", "float", "W.m**-2.nm**-1"),
                   (f"{prefix}_flux_error", "float", "W.m**-2.nm**-1")]
    table.fields.extend(Field(vot, name=n, datatype=d, unit=unit) for n, d, unit in fields)
    table.create_arrays(nrows=len(GAIA_ROWS))
    for i, row in enumerate(GAIA_ROWS):
        (sid, ra, dec, rae, dece, pmra, pmdec, pmrae, pmdece, plx, plxe, g, bp, rp,
         gfoe, bpfoe, rpfoe, ruwe, v) = row
        values = [sid, ra, dec, rae, dece, pmra, pmdec, pmrae, pmdece, plx, plxe, 2016.0, g, bp,
                  rp, gfoe, bpfoe, rpfoe, ruwe]
        masks = [False] * len(values)
        for k, prefix in enumerate(GSPC):
            if v is None:
                values += [np.nan, np.nan, np.nan]
                masks += [True, True, True]
            else:
                mag = v + 0.1 * (k - 2)
                flux = 1e-16 * 10 ** (-0.4 * (mag - 10.0))
                values += [mag, flux, flux * 0.01]      # 1 % flux error -> 0.0109 mag
                masks += [False, False, False]
        table.array[i] = tuple(values)
        table.array.mask[i] = tuple(masks)
    return vot


def vizier_votable() -> VOTableFile:
    vot = VOTableFile()
    resource = Resource()
    resource.name = "I/322A"
    vot.resources.append(resource)
    table = TableElement(vot, name="I/322A/out")
    resource.tables.append(table)
    fields = [("RAJ2000", "double", "deg"), ("DEJ2000", "double", "deg"), ("UCAC4", "char", None),
              ("ePos", "short", "mas"), ("f.mag", "float", "mag"), ("pmRA", "double", "mas/yr"),
              ("pmDE", "double", "mas/yr"), ("e_pmRA", "double", "mas/yr"),
              ("e_pmDE", "double", "mas/yr"), ("Jmag", "float", "mag"), ("e_Jmag", "float", "mag"),
              ("Bmag", "float", "mag"), ("e_Bmag", "float", "mag"), ("Vmag", "float", "mag"),
              ("e_Vmag", "float", "mag")]
    for name, dtype, unit in fields:
        extra = {"arraysize": "10"} if dtype == "char" else {}
        table.fields.append(Field(vot, name=name, datatype=dtype, unit=unit, **extra))
    rows = [(31.21, 46.76, "684-012345", 15, 11.20, 12.0, -8.0, 1.5, 1.4, 10.10, 0.02, 11.90,
             0.05, 11.30, 0.04),
            (31.15, 46.72, "684-012346", 40, 14.80, 0.0, 0.0, 4.0, 4.0, 13.20, 0.03, 15.60,
             0.08, 14.90, 0.06)]
    table.create_arrays(nrows=len(rows))
    for i, row in enumerate(rows):
        table.array[i] = row
    return vot


if __name__ == "__main__":
    gaia_votable().to_xml(str(HERE / "gaia_tap_sync_cone.vot"))
    vizier_votable().to_xml(str(HERE / "vizier_ucac4_cone.vot"))
