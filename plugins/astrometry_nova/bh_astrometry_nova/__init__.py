"""bhcore backend 'astrometry_nova': astrometry.net, blind or with a hint.

Why: it needs no starting WCS, so it solves frames that SCAMP cannot start on
(no WCS, wrong pointing, unknown orientation). Local solve-field runs on our own
source list (sep when none is given) with the installed Tycho-2 indexes for wide
fields, and with indexes built on the fly from the reference catalogue cone for
small fields. The remote nova.astrometry.net service is the very last chance:
only when an API key is in the environment and the run is not offline.
Every solution is re-checked against the reference catalogue (enough matches,
small RMS) before it is returned.
"""
from __future__ import annotations

import logging
import os

from pydantic import BaseModel

from bhcore.errors import AstrometryNotSolved, BhError
from bhcore.external import private_workdir
from bhcore.gaia_grid import check_solution, pixel_scale_arcsec
from bhcore.hookspecs import hookimpl
from bhcore.plugins import Executable, PluginInfo
from bhcore.tables import AstrometryResult

NAME = "astrometry_nova"
__version__ = "0.2.0"
log = logging.getLogger(__name__)


class Settings(BaseModel):
    """Settings of the astrometry.net backend (defaults shown by `bhcore plugins list`)."""

    pixel_scale_arcsec: float | None = None   # narrows the search; None: 0.1-200"/px
    scale_tolerance: float = 0.1              # +-10 % around the known scale
    use_pointing: bool = True                 # search near the header pointing/WCS
    search_radius_deg: float = 2.0            # around that pointing
    tycho_indexes: bool = True                # try the installed Tycho-2 indexes (wide fields)
    index_dirs: list[str] = []                # Tycho-2 index folders; empty: Debian's
    build_indexes: bool = True                # small fields: index the catalogue cone
    catalogs: list[str] = []                  # reference chain; empty: observatory's, else gaia, tycho2_local
    catalog_settings: dict[str, dict] = {}
    catalog_merge: bool = False               # every catalogue that answers, merged
    offline: bool = False
    detect_thresh: float = 5.0
    max_sources: int = 300                    # brightest sources handed to solve-field
    tweak_order: int | None = None            # solve-field SIP order; None: from field size
    polish: bool = True                       # refit on the reference (order by BIC)
    cpulimit_s: float = 60.0
    odds_to_solve: float | None = None        # None: astrometry.net's 1e9
    min_matches: int = 8
    max_rms_arcsec: float = 1.0
    max_rms_pixels: float = 0.5
    remote: bool = True                       # nova.astrometry.net as the last chance
    api_key_env: str = "BHCORE_NOVA_API_KEY"
    timeout_s: float = 300.0


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="astrometry", version=__version__,
        description="astrometry.net: local solve-field on the source list (Tycho-2 or "
                    "catalogue-cone indexes); the remote service as the last chance",
        settings_model=Settings,
        executables=(
            Executable("solve-field", apt_package="astrometry.net", version_args=("--version",)),
            Executable("build-astrometry-index", apt_package="astrometry.net", version_args=()),
        ),
        data_files=("/usr/share/astrometry/index-tycho2-*.fits",))


@hookimpl
def bh_solve_astrometry(frame, sources, settings):
    if settings.get("backend") != NAME:
        return None
    s = Settings(**{k: v for k, v in settings.items() if k in Settings.model_fields})
    try:
        return _solve(frame, sources, s, settings)
    except AstrometryNotSolved as exc:
        exc.backend = NAME
        raise
    except BhError:
        raise
    except (OSError, ValueError, KeyError) as exc:   # wrap library failures at the border
        raise AstrometryNotSolved(f"{type(exc).__name__}: {exc}", path=frame.path,
                                  backend=NAME) from exc


def _solve(frame, sources, s: Settings, settings) -> AstrometryResult:
    from bh_catalogs.field import field_cone, frame_epoch, pointing
    from . import local
    if sources is None:
        sources = local.detect(frame, s.detect_thresh)
    if len(sources) < max(4, s.min_matches):
        raise AstrometryNotSolved(f"only {len(sources)} sources (need "
                                  f"{max(4, s.min_matches)})", path=frame.path)
    scale = s.pixel_scale_arcsec or settings.get("pixel_scale_arcsec")
    if not scale and frame.wcs is not None:
        scale = pixel_scale_arcsec(frame.wcs)
    hint = None
    if s.use_pointing:
        hint = field_cone(frame.shape, frame.wcs)[0] if frame.wcs is not None else pointing(frame)
    epoch = frame_epoch(frame)
    notes: dict = {"attempts": []}
    wcs, catalog = _local(frame, sources, s, scale, hint, epoch, notes)
    if wcs is None:
        wcs, catalog = _remote(frame, sources, s, scale, notes)
    if wcs is None:
        tried = "; ".join(notes["attempts"]) or "nothing to try"
        raise AstrometryNotSolved(f"no solution ({tried})", path=frame.path)
    center, radius = field_cone(frame.shape, wcs)
    ref, ref_name = _reference(center, radius, epoch, s, frame, notes)
    if s.polish:
        wcs = _polish(wcs, sources, ref, frame.shape, notes)
    from bh_catalogs.field import main_magnitude
    limit = max(s.max_rms_arcsec, s.max_rms_pixels * pixel_scale_arcsec(wcs))
    matches, rms = check_solution(wcs, sources["x"], sources["y"], ref,
                                  min_matches=s.min_matches, max_rms_arcsec=limit,
                                  backend=NAME, path=frame.path, mags=main_magnitude(ref))
    return AstrometryResult(wcs=wcs, solved=True, n_matched=len(matches), rms_arcsec=rms,
                            backend=NAME, catalog=ref.meta.get("catalog", ref_name),
                            matches=matches, notes=dict(notes, index_catalog=catalog))


def _reference(center, radius, epoch, s: Settings, frame, notes):
    from bh_catalogs.field import load_reference
    chain = s.catalogs or _obs_chain(frame)
    ref, name, attempts = load_reference(center, radius, epoch, chain, {"offline": s.offline},
                                         obs=frame.obs, per_catalog=s.catalog_settings,
                                         merge=s.catalog_merge)
    notes.setdefault("catalog_attempts", []).extend(attempts)
    if ref.meta.get("merged"):
        notes["catalog_merge"] = ref.meta["merged"]
    return ref, name


def _obs_chain(frame):
    obs = frame.obs
    if obs is not None and hasattr(obs, "backends_for"):
        try:
            return tuple(obs.backends_for("catalog"))
        except Exception:  # an observatory without a catalogue choice: use the default
            return ()
    return ()


def _local(frame, sources, s: Settings, scale, hint, epoch, notes):
    """Tycho-2 indexes when the field is wide enough, then indexes built from the cone."""
    from bh_catalogs.field import field_cone, main_magnitude
    from . import indexes, local
    ny, nx = frame.shape
    width = max(nx, ny) * scale / 60.0 if scale else None
    low = high = None
    if scale:
        low, high = scale * (1 - s.scale_tolerance), scale * (1 + s.scale_tolerance)
    radius = s.search_radius_deg if hint is not None else None
    tycho = indexes.tycho_indexes(s.index_dirs) if s.tycho_indexes else []
    usable = indexes.tycho_usable(tycho, width) if width else tycho
    order = s.tweak_order or _tweak_order(width)
    with private_workdir(prefix="bh-nova-") as work:
        xylist = local.write_xylist(work / "sources.fits", sources, s.max_sources)
        if usable:
            config = local.write_config(work / "tycho.cfg", [], usable)
            wcs = local.solve_field(xylist, config, work, frame.shape, scale_low=low,
                                    scale_high=high, center=hint, radius_deg=radius,
                                    tweak_order=order, cpulimit=s.cpulimit_s,
                                    odds_to_solve=s.odds_to_solve, timeout=s.timeout_s)
            notes["attempts"].append(f"Tycho-2 indexes ({len(usable)}): "
                                     f"{'solved' if wcs is not None else 'no solution'}")
            if wcs is not None:
                return wcs, "Tycho-2 (astrometry.net indexes)"
        elif tycho:
            notes["attempts"].append(f"Tycho-2 indexes: quads too large for a "
                                     f"{width:.1f}' field")
        if not s.build_indexes:
            return None, None
        if hint is None or not scale:
            notes["attempts"].append("catalogue-cone index: needs a pointing and a pixel scale")
            return None, None
        center, cone = field_cone(frame.shape, None, hint, scale,
                                  margin_deg=min(s.search_radius_deg, 1.0))
        try:
            ref, ref_name = _reference(center, cone, epoch, s, frame, notes)
        except BhError as exc:
            notes["attempts"].append(f"catalogue-cone index: {exc}")
            return None, None
        mags = main_magnitude(ref)
        keep = indexes.thin_to_detections(ref, mags, hint, len(sources), frame.shape, scale)
        try:
            files = indexes.built_indexes(ref[keep], mags[keep], min(nx, ny) * scale / 60.0,
                                          timeout=s.timeout_s)
        except AstrometryNotSolved as exc:
            notes["attempts"].append(f"catalogue-cone index: {exc}")
            return None, None
        config = local.write_config(work / "cone.cfg", [], files)
        wcs = local.solve_field(xylist, config, work, frame.shape, scale_low=low,
                                scale_high=high, center=hint, radius_deg=radius,
                                tweak_order=order, cpulimit=s.cpulimit_s,
                                odds_to_solve=s.odds_to_solve, timeout=s.timeout_s)
        notes["attempts"].append(f"{ref_name} cone indexes ({len(files)}): "
                                 f"{'solved' if wcs is not None else 'no solution'}")
        return (wcs, f"{ref.meta.get('catalog', ref_name)} cone index") if wcs is not None \
            else (None, None)


def _polish(wcs, sources, ref, shape, notes):
    """Refit solve-field's WCS on the reference cone with the order the data support
    (its own tweak order is fixed in advance); keep the original if the refit fails."""
    from bhcore.gaia_grid import refine_wcs
    try:
        sol = refine_wcs(wcs, sources, ref, shape)
    except BhError as exc:
        notes["polish"] = f"kept solve-field's WCS ({exc})"
        return wcs
    notes["polish"] = {"order": sol.order, "n_stars": sol.n_stars,
                       "rms_arcsec": sol.rms_arcsec}
    notes["solve_field_wcs"] = wcs
    return sol.wcs


def _tweak_order(width_arcmin) -> int:
    """SIP order for solve-field: 1 below 20', 2 below 1 deg, else 3."""
    if not width_arcmin:
        return 2
    return 1 if width_arcmin < 20 else 2 if width_arcmin < 60 else 3


def _remote(frame, sources, s: Settings, scale, notes):
    from . import remote
    key = os.environ.get(s.api_key_env, "")
    if not s.remote or s.offline or not key:
        why = ("disabled" if not s.remote else "offline" if s.offline
               else f"no API key in ${s.api_key_env}")
        notes["attempts"].append(f"nova.astrometry.net: not tried ({why})")
        return None, None
    wcs = remote.solve(sources, frame.shape, key, scale, s.scale_tolerance, s.timeout_s)
    notes["attempts"].append(f"nova.astrometry.net: {'solved' if wcs else 'no solution'}")
    return (wcs, "nova.astrometry.net") if wcs is not None else (None, None)
