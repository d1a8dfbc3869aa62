"""bhcore backend 'astrometry_scamp': SExtractor + SCAMP against a local reference catalogue.

Why SCAMP: given a rough WCS it matches and fits distortion (TPV) fast and well.
It needs that rough WCS: the frame's own, else one built from the pointing
(RA/DEC keywords) and the pixel scale; with neither, astrometry_nova is asked for
a first solution (or the fallback chain moves on). The reference is a local LDAC
written from the catalogue layer (Gaia, then the offline Tycho-2, by default; with
``catalog_merge`` every catalogue of the chain that answers, merged), so SCAMP
never goes online. SCAMP exits 0 even when it cross-identifies wrongly, so
every solution is re-checked here: too few matches, too large an RMS or a low
matching contrast is refused with AstrometryNotSolved, never passed on. The
distortion degree starts from the field size, is capped by the number of stars
SCAMP matched, and moves down as well as up by the BIC: a higher degree is kept
only when the BIC says so (a deep catalogue on the central third of a wide frame
cannot fix a distortion that would then be extrapolated over the rest).
"""
from __future__ import annotations

import logging
import math

import numpy as np
from astropy.wcs import WCS
from pydantic import BaseModel

from bhcore.errors import AstrometryNotSolved, BhError
from bhcore.external import private_workdir
from bhcore.frame import write_frame
from bhcore.gaia_grid import check_solution, pixel_scale_arcsec
from bhcore.hookspecs import hookimpl
from bhcore.plugins import Executable, PluginInfo
from bhcore.tables import AstrometryResult

NAME = "astrometry_scamp"
__version__ = "0.2.0"
log = logging.getLogger(__name__)


class Settings(BaseModel):
    """Settings of the SCAMP backend (defaults shown by `bhcore plugins list`)."""

    pixel_scale_arcsec: float | None = None   # used to build a WCS when the frame has none
    rotation_deg: float = 0.0                 # position angle of +y (180 = north down)
    flip: bool = False                        # True: east to the right (mirrored optics)
    position_maxerr_arcmin: float = 12.0      # how far off the starting WCS may be
    position_maxerr_wide_arcmin: float | None = None   # once more this wide if no convincing match
    posangle_maxerr_deg: float = 5.0
    pixscale_maxerr: float = 1.1
    distort_degree: int | None = None         # None: from field size and star count
    catalogs: list[str] = []                  # reference chain; empty: observatory's, else gaia, tycho2_local
    catalog_settings: dict[str, dict] = {}    # per-catalogue settings, e.g. {"file": {"path": ...}}
    catalog_merge: bool = False               # every catalogue that answers, merged
    offline: bool = False
    max_reference_stars: int = 3000
    detect_thresh: float = 5.0
    min_matches: int = 8
    max_rms_arcsec: float = 1.0
    max_rms_pixels: float = 0.5               # the RMS limit is the larger of the two
    min_contrast: float = 3.0                 # SCAMP's XY_Contrast of the match
    bootstrap_with_nova: bool = True          # no WCS and no pointing: first solution from astrometry_nova
    timeout_s: float = 300.0


@hookimpl
def bh_plugin_info():
    return PluginInfo(
        name=NAME, stage="astrometry", version=__version__,
        description="SExtractor + SCAMP against a local reference catalogue (Gaia DR3, "
                    "Tycho-2 offline, VizieR catalogues, user files)",
        settings_model=Settings,
        executables=(
            Executable("source-extractor", apt_package="source-extractor",
                       version_args=("--version",)),
            Executable("scamp", apt_package="scamp", version_args=("-v",)),
        ))


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
    from bh_catalogs.field import field_cone, frame_epoch, load_reference, main_magnitude
    from . import ldac
    start, how = starting_wcs(frame, s, settings)
    epoch = frame_epoch(frame)
    year = float(epoch.jyear) if epoch is not None else 2016.0
    chain = s.catalogs or _obs_chain(frame)

    def stars_within(search_arcmin):
        """Reference stars of the frame's cone widened by the search radius, brightest
        first (a wider cone than the search dilutes SCAMP's match)."""
        center, radius = field_cone(frame.shape, start, margin_deg=search_arcmin / 60.0)
        ref, name, attempts = load_reference(
            center, radius, epoch, chain, {"offline": s.offline}, obs=frame.obs,
            per_catalog=s.catalog_settings, merge=s.catalog_merge)
        mags = main_magnitude(ref)
        order = np.argsort(np.where(np.isfinite(mags), mags, np.inf), kind="stable")
        keep = order[: s.max_reference_stars]
        return ref[keep], mags[keep], name, attempts

    ref, mags, cat_name, cat_attempts = stars_within(s.position_maxerr_arcmin)
    merged = ref.meta.get("merged")
    scale = pixel_scale_arcsec(start)
    with private_workdir(prefix="bh-scamp-") as work:
        header = ldac.image_header(frame.shape, start)
        if sources is None:
            image = work / "frame.fits"
            write_frame(frame.replace(header=header), image)
            catalog = ldac.run_sextractor(image, work, gain=settings.get("gain"),
                                          saturation=settings.get("saturation"),
                                          thresh=s.detect_thresh, timeout=s.timeout_s)
        else:
            catalog = ldac.sources_ldac(work / "sources.ldac", sources, header)
        objects = ldac.read_objects(catalog)
        if len(objects) < s.min_matches:
            raise AstrometryNotSolved(f"only {len(objects)} sources detected "
                                      f"(need {s.min_matches})", path=frame.path)
        reference = ldac.reference_ldac(work / "reference.ldac", ref, mags, year)
        first, top = choose_degree(frame.shape, scale, len(objects), len(ref))
        degree = s.distort_degree or first
        try:
            run = _run_checked(catalog, reference, work, degree, s, scale)
            search = s.position_maxerr_arcmin
        except AstrometryNotSolved as exc:
            # a mount whose header pointing stays put while the field drifts puts late
            # frames beyond the usual search, but searching wide on every frame lets
            # SCAMP's match lose contrast: wide only when the usual search failed
            search = s.position_maxerr_wide_arcmin
            if not search or search <= s.position_maxerr_arcmin:
                raise
            log.info("SCAMP within %g': %s; trying %g'", s.position_maxerr_arcmin, exc, search)
            s = s.model_copy(update={"position_maxerr_arcmin": search})
            ref, mags, cat_name, cat_attempts = stars_within(search)
            merged = ref.meta.get("merged")
            reference = ldac.reference_ldac(work / "reference_wide.ldac", ref, mags, year)
            run = _run_checked(catalog, reference, work, degree, s, scale)
        top = min(top, degree_for_stars(run.qa.get("n_reference", 0)))   # stars SCAMP matched
        if s.distort_degree is None and degree > top:        # too few matches for this degree
            degree = top
            run = _run_checked(catalog, reference, work, degree, s, scale)
        tried = {degree}
        while s.distort_degree is None and degree > 1:       # fewer terms unless BIC objects
            try:
                lower = _run_checked(catalog, reference, work, degree - 1, s, scale)
            except AstrometryNotSolved:
                break
            tried.add(degree - 1)
            if bic(run.qa, degree) < bic(lower.qa, degree - 1) - 2.0:
                break
            run, degree = lower, degree - 1
        while s.distort_degree is None and degree < top and degree + 1 not in tried:
            try:                                             # more terms only if BIC says so
                better = _run_checked(catalog, reference, work, degree + 1, s, scale)
            except AstrometryNotSolved:
                break
            if not bic(better.qa, degree + 1) < bic(run.qa, degree) - 2.0:
                break
            run, degree = better, degree + 1
    x = np.asarray(objects["XWIN_IMAGE"], float) - 1.0
    y = np.asarray(objects["YWIN_IMAGE"], float) - 1.0
    limit = max(s.max_rms_arcsec, s.max_rms_pixels * scale)
    matches, rms = check_solution(run.wcs, x, y, ref, min_matches=s.min_matches,
                                  max_rms_arcsec=limit, backend=NAME, path=frame.path,
                                  mags=mags)
    notes = {"start": how, "search_arcmin": search, "distort_degree": degree, "scamp": run.qa,
             "catalog_attempts": cat_attempts, "n_detections": int(len(objects)),
             "n_reference": int(len(ref))}
    if merged:
        notes["catalog_merge"] = merged
    return AstrometryResult(wcs=run.wcs, solved=True, n_matched=len(matches), rms_arcsec=rms,
                            backend=NAME, catalog=ref.meta.get("catalog", cat_name),
                            matches=matches, notes=notes)


def _obs_chain(frame):
    obs = frame.obs
    if obs is not None and hasattr(obs, "backends_for"):
        try:
            return tuple(obs.backends_for("catalog"))
        except Exception:  # an observatory without a catalogue choice: use the default
            return ()
    return ()


def starting_wcs(frame, s: Settings, settings):
    """(WCS, how): the frame's own (linear part only), else built from the pointing."""
    from bh_catalogs.field import pointing
    if frame.wcs is not None and frame.wcs.has_celestial:
        return linear_tan(frame.wcs.celestial, frame.shape), "header"
    center = pointing(frame)
    scale = s.pixel_scale_arcsec or settings.get("pixel_scale_arcsec")
    if center is not None and scale:
        return wcs_from_pointing(frame.shape, center, float(scale), s.rotation_deg, s.flip), \
            "pointing"
    if s.bootstrap_with_nova:
        return _bootstrap(frame, settings), "astrometry_nova"
    raise AstrometryNotSolved("no starting WCS (no WCS, and no pointing or pixel "
                              "scale); astrometry_nova can solve blind", path=frame.path)


def linear_tan(wcs: WCS, shape) -> WCS:
    """The TAN part of a WCS, re-centred on the frame (SCAMP needs only a rough start)."""
    ny, nx = shape
    ra, dec = wcs.all_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]
    out = WCS(naxis=2)
    out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    out.wcs.crval = [float(ra), float(dec)]
    out.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    out.wcs.cd = wcs.pixel_scale_matrix
    out.wcs.radesys = "ICRS"
    return out


def wcs_from_pointing(shape, center, scale_arcsec: float, rotation_deg: float, flip: bool) -> WCS:
    """A TAN WCS at the pointing: north up and east left, turned by ``rotation_deg``."""
    ny, nx = shape
    c, sn = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    parity = -1.0 if not flip else 1.0
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(center.icrs.ra.deg), float(center.icrs.dec.deg)]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.cd = scale_arcsec / 3600.0 * np.array([[parity * c, sn], [-parity * sn, c]])
    w.wcs.radesys = "ICRS"
    return w


def _bootstrap(frame, settings) -> WCS:
    """A first WCS from astrometry_nova (a blind solve), when it is installed."""
    from bhcore.pipeline import resolve_settings
    from bhcore.plugins import call_backend, load_plugins, plugin_info
    try:
        pm = load_plugins(["astrometry_nova"])
        info = plugin_info(pm, "astrometry_nova")
        nova_settings = resolve_settings("astrometry_nova", info, frame.obs, frame,
                                         {k: v for k, v in settings.items() if k != "backend"})
        result = call_backend(pm, "astrometry", "astrometry_nova", frame=frame, sources=None,
                              settings=nova_settings)
    except BhError as exc:
        raise AstrometryNotSolved(f"no starting WCS and astrometry_nova could not "
                                  f"provide one ({exc})", path=frame.path) from None
    return linear_tan(result.wcs.celestial, frame.shape)


def choose_degree(shape, scale_arcsec: float, n_sources: int, n_reference: int):
    """(first, highest) distortion degree to try.

    First: 1 below 20' (3 over-fits a 10' field), 2 below 1 deg, else 3. Highest:
    what the stars support ((d+1)(d+2)/2 terms per axis, five stars per term). From
    the first, the degree moves down while the BIC does not object and up while it
    asks for more terms (a real distortion): a degree above 1 is kept only when it
    lowers the BIC by more than 2.
    """
    diag_arcmin = math.hypot(*shape) * scale_arcsec / 60.0
    by_field = 1 if diag_arcmin < 20 else 2 if diag_arcmin < 60 else 3
    top = degree_for_stars(min(n_sources, n_reference))
    return min(by_field, top), top


def degree_for_stars(n_stars: int) -> int:
    """Highest degree with five stars per term ((d+1)(d+2)/2 terms per axis)."""
    return max((d for d in (1, 2, 3) if n_stars >= 5 * (d + 1) * (d + 2) / 2), default=1)


def bic(qa: dict, degree: int) -> float:
    """Bayesian information criterion of a SCAMP fit from its XML residuals."""
    n, sig = qa.get("n_reference_highsn", 0), qa.get("sigma_highsn_arcsec") or []
    if n < 10:
        n, sig = qa.get("n_reference", 0), qa.get("sigma_arcsec") or []
    if n < 3 or len(sig) < 2 or not np.all(np.isfinite(sig[:2])):
        return float("inf")
    rss = n * (sig[0] ** 2 + sig[1] ** 2)
    k = (degree + 1) * (degree + 2)
    return 2 * n * math.log(max(rss, 1e-30) / (2 * n)) + k * math.log(2 * n)


def _run_checked(catalog, reference, work, degree, s: Settings, scale):
    from . import scamp
    run = scamp.solve(catalog, reference, work, degree=degree,
                      position_maxerr=s.position_maxerr_arcmin,
                      posangle_maxerr=s.posangle_maxerr_deg, pixscale_maxerr=s.pixscale_maxerr,
                      crossid_radius=max(2.0, 3.0 * scale), timeout=s.timeout_s)
    contrast = run.qa.get("xy_contrast", np.nan)
    if np.isfinite(contrast) and contrast < s.min_contrast:
        raise AstrometryNotSolved(f"SCAMP's match is not convincing (XY contrast "
                                  f"{contrast:.2f} < {s.min_contrast})")
    return run
