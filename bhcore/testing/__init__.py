"""Testing helpers: synthetic star fields and nights with truth and Cramér-Rao bounds.

Tests and benchmarks judge the engines against these truth tables and bounds, not
against numbers typed by hand.
"""
from __future__ import annotations

from .crlb import blend_bounds, cramer_rao_bounds
from .night import Night, make_night
from .psf_models import PSFModel
from .synthetic import StarField, add_noise, make_star_field, make_wcs, render_stars

__all__ = ["Night", "PSFModel", "StarField", "add_noise", "blend_bounds",
           "cramer_rao_bounds", "make_night", "make_star_field", "make_wcs",
           "render_stars"]
