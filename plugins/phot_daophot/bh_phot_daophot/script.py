"""CL scripts for the DAOPHOT chain, with every task parameter set explicitly.

IRAF keeps task parameters between runs in ``uparm``; a private HOME isolates runs,
and on top of that every ``datapars``/``findpars``/``centerpars``/``fitskypars``/
``photpars``/``daopars`` parameter is written here, so a run never depends on what
an earlier run (or a user's IRAF setup) left behind.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Geometry:
    """Numbers derived from the frame and the settings (pixels, ADU, electrons)."""

    fwhm: float
    sigma: float
    datamin: float | None
    datamax: float | None
    epadu: float
    readnoise_e: float
    norm_radius: float                # the PHOT aperture the PSF is normalised to
    apertures: tuple[float, ...]      # the requested aperture radii (IRAF sorts them)
    annulus: float
    dannulus: float
    cbox: float
    psfrad: float
    fitrad: float
    n_pixels: int

    @property
    def matchrad(self) -> float:
        return max(1.0, self.fitrad)


def _below(saturation: float) -> float:
    """DAOPHOT treats pixels *above* datamax as bad; clipped pixels equal the level."""
    return saturation - 0.5 if saturation > 100.0 else saturation * 0.995


def cl_value(value: Any) -> str:
    if value is None:
        return "INDEF"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "INDEF"
        return repr(round(value, 6))
    text = str(value)
    if '"' in text or "\n" in text:
        raise ValueError(f"CL string {text!r} contains a quote or a newline")
    return f'"{text}"'


def _assign(task: str, values: Mapping[str, Any]) -> list[str]:
    return [f"{task}.{name} = {cl_value(value)}" for name, value in values.items()]


def geometry(settings: Mapping[str, Any], *, fwhm: float, sigma: float,
             datamin: float | None, n_pixels: int) -> Geometry:
    radii = [float(r) for r in settings["aperture_radii"]]
    norm = round(float(settings["psf_norm_radius_fwhm"]) * fwhm, 3)
    apertures = tuple(sorted(set(radii)))
    annulus = max(float(settings["annulus_fwhm"]) * fwhm, max(apertures + (norm,)) + 1.0)
    gain = float(settings.get("gain") or 1.0)
    read_noise_adu = float(settings.get("read_noise_adu") or 0.0)
    saturation = settings.get("saturation")
    return Geometry(
        fwhm=float(fwhm), sigma=float(sigma), datamin=datamin,
        datamax=_below(float(saturation)) if saturation else None,
        epadu=gain, readnoise_e=read_noise_adu * gain, norm_radius=norm,
        apertures=apertures,
        annulus=round(annulus, 3),
        dannulus=round(max(float(settings["dannulus_fwhm"]) * fwhm, 3.0), 3),
        cbox=round(max(float(settings["cbox_fwhm"]) * fwhm, 5.0), 3),
        psfrad=round(float(settings["psfrad_fwhm"]) * fwhm, 3),
        fitrad=round(float(settings["fitrad_fwhm"]) * fwhm, 3),
        n_pixels=int(n_pixels))


def parameter_lines(settings: Mapping[str, Any], g: Geometry, varorder: int) -> list[str]:
    """Every parameter of the DAOPHOT parameter sets, from settings and the frame."""
    lines = _assign("daophot", {"verify": False, "update": False, "verbose": False,
                                "text": True, "wcsin": "logical", "wcsout": "logical",
                                "wcspsf": "logical", "cache": False})
    lines += _assign("datapars", {
        "scale": 1.0, "fwhmpsf": g.fwhm, "emission": True, "sigma": g.sigma,
        "datamin": g.datamin, "datamax": g.datamax, "noise": "poisson", "ccdread": "",
        "gain": "", "readnoise": g.readnoise_e, "epadu": g.epadu, "exposure": "",
        "airmass": "", "filter": "", "obstime": "", "itime": 1.0, "xairmass": None,
        "ifilter": "INDEF", "otime": "INDEF"})
    lines += _assign("findpars", {
        "threshold": float(settings["threshold"]), "nsigma": 1.5, "ratio": 1.0,
        "theta": 0.0, "sharplo": float(settings["sharplo"]),
        "sharphi": float(settings["sharphi"]), "roundlo": float(settings["roundlo"]),
        "roundhi": float(settings["roundhi"]), "mkdetections": False})
    lines += _assign("centerpars", {
        "calgorithm": "centroid", "cbox": g.cbox, "cthreshold": 0.0, "minsnratio": 1.0,
        "cmaxiter": 10, "maxshift": 1.0, "clean": False, "rclean": 1.0, "rclip": 2.0,
        "kclean": 3.0, "mkcenter": False})
    lines += _assign("fitskypars", {
        "salgorithm": settings["sky_algorithm"], "annulus": g.annulus,
        "dannulus": g.dannulus, "skyvalue": 0.0, "smaxiter": 10, "sloclip": 0.0,
        "shiclip": 0.0, "snreject": 50, "sloreject": 3.0, "shireject": 3.0, "khist": 3.0,
        "binsize": 0.1, "smooth": False, "rgrow": 0.0, "mksky": False})
    lines += _assign("photpars", {
        "weighting": "constant", "apertures": f"{g.norm_radius:g}",
        "zmag": float(settings["zmag"]), "mkapert": False})
    lines += _assign("daopars", {
        "function": settings["function"], "varorder": int(varorder),
        "nclean": int(settings["nclean"]), "saturated": False, "matchrad": g.matchrad,
        "psfrad": g.psfrad, "fitrad": g.fitrad, "recenter": bool(settings["recenter"]),
        "fitsky": bool(settings["fitsky"]), "groupsky": True,
        "sannulus": g.annulus, "wsannulus": g.dannulus, "flaterr": 0.75,
        "proferr": 5.0, "maxiter": int(settings["maxiter"]), "clipexp": 6,
        "cliprange": 2.5, "mergerad": None, "critsnratio": float(settings["critsnratio"]),
        "maxnstar": min(50000, max(10000, g.n_pixels // 50)),
        "maxgroup": int(settings["maxgroup"])})
    return lines


def _call(task: str, *args: str, **flags: Any) -> str:
    parts = [cl_value(a) for a in args]
    parts += [f"{k}={cl_value(v)}" for k, v in flags.items()]
    return f"{task} ({', '.join(parts)})"


def when_exists(path: str, lines: list[str]) -> list[str]:
    """CL lines run only if ``path`` exists (e.g. PHOT writes nothing for no star)."""
    return [f"if (access ({cl_value(path)})) {{"] + [f"    {line}" for line in lines] + ["}"]


def daofind(image: str, coo: str) -> str:
    return _call("daofind", image, coo, starmap="", skymap="", boundary="nearest",
                 constant=0.0, interactive=False, verify=False, verbose=False)


def phot(image: str, coo: str, mag: str) -> str:
    return _call("phot", image, coo, mag, skyfile="", plotfile="", interactive=False,
                 radplots=False, verify=False, verbose=False)


def find_and_phot(image: str, coo: str, mag: str) -> list[str]:
    """daofind, then PHOT in the normalisation aperture (the PSF chain's input)."""
    return [daofind(image, coo), phot(image, coo, mag)]


def aperture_phot(image: str, coo: str, mag: str, g: Geometry) -> list[str]:
    """PHOT in the requested apertures (a separate file), then back to the normalisation
    aperture so that later PHOT runs feed the PSF chain consistently."""
    return [f'photpars.apertures = "{",".join(f"{a:g}" for a in g.apertures)}"',
            phot(image, coo, mag),
            f'photpars.apertures = "{g.norm_radius:g}"']


def select_psf_stars(image: str, mag: str, pst: str, maxnpsf: int) -> list[str]:
    return [_call("pstselect", image, mag, pst, int(maxnpsf), plotfile="",
                  interactive=False, mkstars=False, verify=False, verbose=False)]


def psf_and_allstar(image: str, mag: str, pst: str, psf: str, als: str, sub: str) -> list[str]:
    stem = als.rsplit(".", 1)[0]
    return [
        _call("psf", image, mag, pst, psf, f"{stem}.pso", f"{stem}.psg", plotfile="",
              matchbyid=True, interactive=False, mkstars=False, showplots=False,
              verify=False, verbose=False),
        allstar(image, mag, psf, als, sub),
    ]


def allstar(image: str, photfile: str, psf: str, als: str, sub: str) -> str:
    stem = als.rsplit(".", 1)[0]
    return _call("allstar", image, photfile, psf, als, f"{stem}.arj", sub,
                 verify=False, verbose=False)


def merge_and_refit(image: str, als: str, coo2: str, mag2: str, apmag2: str,
                    merged: str, psf: str, als2: str, sub2: str, id_offset: int,
                    g: Geometry) -> list[str]:
    """Second pass: PHOT the stars found on the residual, give them IDs above
    ``id_offset`` (PHOT numbers stars 1..n), merge them with the ALLSTAR results and
    run ALLSTAR again; also measure the new stars in the requested apertures."""
    return [
        phot(image, coo2, mag2),
        _call("prenumber", mag2, idoffset=int(id_offset)),
        _call("pfmerge", f"{als},{mag2}", merged, verbose=False),
        allstar(image, merged, psf, als2, sub2),
        *aperture_phot(image, coo2, apmag2, g),
        _call("prenumber", apmag2, idoffset=int(id_offset)),
    ]
