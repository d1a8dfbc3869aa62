"""The remote nova.astrometry.net service through astroquery: the very last chance.

Only called with an API key from the environment and outside offline runs; tests
never call it (they have no key and no network). The source list is sent, never
the image: x, y are 1-based as astrometry.net expects.
"""
from __future__ import annotations

import warnings

import numpy as np
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from bhcore.errors import AstrometryNotSolved


def solve(sources, shape, api_key: str, scale, tolerance: float, timeout: float) -> WCS | None:
    """Solve the source list remotely; None when the service finds no solution."""
    from astroquery.astrometry_net import AstrometryNet
    ny, nx = shape
    order = np.argsort(-np.asarray(sources["flux"], float))[:300]
    client = AstrometryNet()
    client.api_key = api_key
    options = {"solve_timeout": timeout}
    if scale:
        options.update(scale_units="arcsecperpix", scale_type="ul",
                       scale_lower=scale * (1 - tolerance), scale_upper=scale * (1 + tolerance))
    try:
        header = client.solve_from_source_list(
            np.asarray(sources["x"], float)[order] + 1.0,
            np.asarray(sources["y"], float)[order] + 1.0, nx, ny, **options)
    except Exception as exc:  # network, timeouts, service errors
        raise AstrometryNotSolved(f"nova.astrometry.net failed: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}") from None
    if not header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return WCS(header)
