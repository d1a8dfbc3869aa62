"""bhcore: calibrated photometry, light curves and astrometry from raw CCD frames."""
from __future__ import annotations

__version__ = "0.1.0"
