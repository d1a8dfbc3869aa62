"""The SExtractor ASCII_HEAD catalogue that BHTOM accepts.

Columns: NUMBER ALPHA_J2000 DELTA_J2000 XWIN_IMAGE YWIN_IMAGE MAG_AUTO MAGERR_AUTO,
written by SExtractor itself (1-based pixels, its own header lines). SExtractor
does not apply SIP distortion terms, so when the frame's WCS has them the sky
positions are recomputed with astropy from the windowed pixel positions.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.utils.exceptions import AstropyWarning

from bhcore.errors import PhotometryError
from bhcore.external import private_workdir
from bhcore.frame import atomic_write_text

from . import config as cfg
from .runner import run_sextractor_file, write_inputs

BHTOM_PARAMS = ("NUMBER", "ALPHA_J2000", "DELTA_J2000", "XWIN_IMAGE", "YWIN_IMAGE",
                "MAG_AUTO", "MAGERR_AUTO")
ROW_FORMAT = "{:10d} {:11.7f} {:+11.7f} {:10.4f} {:10.4f} {:8.4f} {:8.4f}"


def write_bhtom_catalog(frame, out_path, settings: Mapping[str, Any] | None = None) -> Path:
    """Write the BHTOM catalogue of ``frame`` to ``out_path`` (atomically); returns it.

    :param frame: a ``Frame`` with a celestial WCS.
    :param out_path: where the ASCII catalogue goes.
    :param settings: resolved ``phot_sex`` settings; None = the plugin defaults plus the
        camera values found in the frame's header.
    :raises PhotometryError: the frame has no WCS.
    """
    if frame.wcs is None:
        raise PhotometryError("no WCS: the BHTOM catalogue needs sky positions",
                              path=frame.path, backend="phot_sex")
    if settings is None:
        from bhcore.pipeline import camera_values

        from .settings import Settings
        settings = {**Settings().model_dump(), **camera_values(frame, None)}
    settings = dict(settings)
    with private_workdir(prefix="bh-bhtom-") as work:
        image, weight, flags, _ = write_inputs(frame, work)
        opts = cfg.sextractor_options(
            settings, catalog=work / "bhtom.cat",
            params=cfg.write_params(work / "bhtom.param", BHTOM_PARAMS),
            fwhm_px=settings.get("fwhm"),
            diameters=[2 * r for r in settings["aperture_radii"]], weight=weight,
            flags=flags, n_pixels=int(frame.data.size))
        opts["CATALOG_TYPE"] = "ASCII_HEAD"
        opts["PIXEL_SCALE"] = 0.0                      # from the WCS
        catalog = run_sextractor_file(image, opts, work, "bhtom", float(settings["timeout"]))
        text = catalog.read_text()
    if getattr(frame.wcs, "sip", None) is not None:
        text = _sky_from_astropy(text, frame.wcs)
    return atomic_write_text(out_path, text)


def _sky_from_astropy(text: str, wcs) -> str:
    header = [line for line in text.splitlines() if line.startswith("#")]
    rows = [line.split() for line in text.splitlines() if line.strip() and
            not line.startswith("#")]
    if not rows:
        return text
    values = np.array([[float(v) for v in row] for row in rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        ra, dec = wcs.celestial.all_pix2world(values[:, 3], values[:, 4], 1)
    out = list(header)
    for row, a, d in zip(values, ra, dec):
        out.append(ROW_FORMAT.format(int(row[0]), float(a), float(d), *row[3:]))
    return "\n".join(out) + "\n"


__all__ = ["BHTOM_PARAMS", "write_bhtom_catalog"]
