"""Header standardisation: ask every header plugin, merge, stamp provenance, write.

``bh_fill_header`` is a collecting hook: the generic built-in ``fits_manager``
and any observatory-specific fixers each return the cards they can set. The
merge rule is simple and recorded in the output:

* a fixer (any plugin whose ``PluginInfo.extra`` does not say ``generic``)
  overrides the generic plugin: it exists precisely to correct what the generic
  reading gets wrong for one camera;
* two fixers that set one keyword to different values are a HeaderError: there
  is no principled winner, and guessing would hide a registry mistake;
* equal values are not a conflict.

Provenance: ``BHCORE`` (bhcore version), ``ONAME`` (camera prefix), and
``HISTORY BHSETBY <plugin>: KEY, KEY, ...`` lines saying which plugin set which
keyword, plus ``HISTORY BHOVERRD KEY: <fixer> over <generic> (was ...)`` for every
override. ``setby(header)`` reads the BHSETBY record back.
"""
from __future__ import annotations

import logging
import math
import re
import textwrap
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import __version__
from .errors import HeaderError, BhError
from .frame import Frame, file_stem, read_frame, write_frame

log = logging.getLogger(__name__)
HOOK = "bh_fill_header"
GENERIC_DEFAULT = "fits_manager"
_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
               "XTENSION", "PCOUNT", "GCOUNT", "END", "BZERO", "BSCALE", "BLANK",
               "HISTORY", "COMMENT", "", "EXTNAME", "EXTVER", "INHERIT", "CHECKSUM",
               "DATASUM"}
_PROVENANCE_TAGS = ("BHSETBY ", "BHOVERRD ")


def header_plugins(obs=None):
    """A plugin manager with the generic FITS manager plus the observatory's fixers."""
    from .plugins import load_plugins
    extra = tuple(obs.backends_for("header")) if obs is not None else ()
    return load_plugins((GENERIC_DEFAULT, *extra))


def collect_cards(frame: Frame, obs, pm) -> tuple[dict, dict, list[str]]:
    """Ask every header plugin; return (cards, set_by, overrides).

    ``cards`` maps KEYWORD -> (value, comment); ``set_by`` maps KEYWORD -> plugin;
    ``overrides`` are human-readable lines about fixers overriding the generic one.
    """
    answers = []
    for name, generic in _implementers(pm):
        others = [pm.get_plugin(n) for n, _ in _implementers(pm) if n != name]
        caller = pm.subset_hook_caller(HOOK, remove_plugins=others)
        try:
            results = caller(frame=frame, obs=obs)
        except BhError:
            raise
        except Exception as exc:   # a plugin bug must not look like a bad frame
            raise HeaderError(f"header plugin '{name}' failed: {type(exc).__name__}: {exc}",
                              path=frame.path, backend=name) from exc
        for result in results:
            if result is not None:
                answers.append((name, generic, _normalise(result, name, frame)))
    return merge(answers, path=frame.path)


def merge(answers, path=None) -> tuple[dict, dict, list[str]]:
    """Merge ``[(plugin, is_generic, {KEY: (value, comment)})]`` by the module's rule."""
    cards, set_by, generic_of, overrides = {}, {}, {}, []
    for name, generic, result in sorted(answers, key=lambda a: not a[1]):  # generic first
        for key, (value, comment) in result.items():
            if key not in cards:
                cards[key], set_by[key], generic_of[key] = (value, comment), name, generic
                continue
            old = cards[key][0]
            if _same(old, value):
                continue
            if generic_of[key] and not generic:
                overrides.append(f"{key}: {name} over {set_by[key]} (was {old!r})")
                cards[key], set_by[key], generic_of[key] = (value, comment), name, False
            elif generic_of[key] == generic:
                kind = "generic plugins" if generic else "observatory fixers"
                raise HeaderError(f"{kind} '{set_by[key]}' and '{name}' set {key} to "
                                  f"different values ({old!r} and {value!r})", path=path)
    return cards, set_by, overrides


def standardise(frame: Frame, obs=None, pm=None) -> Frame:
    """A new Frame whose header carries the standard cards; ``frame`` is untouched."""
    obs = obs if obs is not None else frame.obs
    pm = pm if pm is not None else header_plugins(obs)
    cards, set_by, overrides = collect_cards(frame, obs, pm)
    header = _base_header(frame)
    for key, (value, comment) in cards.items():
        if comment is None and key in header and _same(header[key], value):
            continue                       # unchanged raw card keeps its own comment
        header[key] = (value, _fit_comment(key, value, comment or ""))
    header["BHCORE"] = (__version__, "bhcore version that standardised this header")
    oname = getattr(obs, "oname", None)
    if oname:
        header["ONAME"] = (str(oname), "BHTOM camera prefix (registry entry)")
    _stamp_history(header, set_by, overrides)
    for line in overrides:
        log.info("%s: header override %s", frame.name, line)
    return frame.replace(header=header, obs=obs)


def setby(header: fits.Header) -> dict[str, str]:
    """KEYWORD -> plugin, read back from the ``HISTORY BHSETBY`` lines."""
    result = {}
    for line in header.get("HISTORY", []):
        text = str(line)
        if text.startswith("BHSETBY "):
            plugin, _, keys = text[len("BHSETBY "):].partition(":")
            for key in keys.split(","):
                if key.strip():
                    result[key.strip()] = plugin.strip()
    return result


def output_path(path: str | Path, out_dir: str | Path) -> Path:
    """``out_dir/<stem>.fits`` with the products' stem rule (``frame.file_stem``)."""
    stem = file_stem(path)
    out_dir = Path(out_dir)
    target = out_dir / f"{stem}.fits"
    if target.resolve().parent != out_dir.resolve():      # belt and braces
        raise HeaderError("output name would leave the output folder", path=path)
    return target


def read_standardised(path: str | Path, obs, *, check: bool = False) -> Frame:
    """The frame as every stage sees it: read, its header filled by the generic FITS
    manager and the observatory's fixers (never the file on disk)."""
    return standardise(read_frame(path, obs=obs, check=check), obs, header_plugins(obs))


def write_standardised(path: str | Path, obs, out_dir: str | Path, pm=None) -> Path:
    """Read ``path``, standardise its header, write ``out_dir/<stem>.fits`` atomically."""
    frame = read_frame(path, obs=obs)
    target = output_path(path, out_dir)
    if target.exists() and target.resolve() == Path(path).resolve():
        raise HeaderError("output would overwrite the input file", path=path)
    return write_frame(standardise(frame, obs, pm), target)


# --- helpers ---------------------------------------------------------------------------
def _implementers(pm):
    """(plugin name, is_generic) of every non-wrapper bh_fill_header implementation."""
    out = []
    for impl in getattr(pm.hook, HOOK).get_hookimpls():
        if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
            continue
        out.append((impl.plugin_name, _is_generic(impl.plugin)))
    return out


def _is_generic(plugin) -> bool:
    info_hook = getattr(plugin, "bh_plugin_info", None)
    try:
        info = info_hook() if info_hook else None
    except Exception:       # an info hook that fails is reported by `plugins list`
        return False
    return bool(getattr(info, "extra", {}).get("generic", False)) if info else False


def _normalise(result, plugin: str, frame: Frame) -> dict:
    if not isinstance(result, dict):
        raise HeaderError(f"header plugin '{plugin}' returned {type(result).__name__}, "
                          "not a dict of cards", path=frame.path, backend=plugin)
    cards = {}
    for key, item in result.items():
        value, comment = item if isinstance(item, tuple) else (item, None)
        key = str(key).upper()
        if not _KEY.match(key) or key in _STRUCTURAL:
            raise HeaderError(f"header plugin '{plugin}' set an invalid keyword '{key}'",
                              path=frame.path, backend=plugin)
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue                       # unknown: the card is simply not written
        if not isinstance(value, (str, bool, int, float)):
            raise HeaderError(f"header plugin '{plugin}' set {key} to a "
                              f"{type(value).__name__}", path=frame.path, backend=plugin)
        if isinstance(value, str):
            value = fits_text(value)
        cards[key] = (value, None if comment is None else fits_text(str(comment))[:60])
    return cards


def fits_text(text: str) -> str:
    """FITS cards hold printable ASCII only: fold accents (Białków -> Bialkow), '?' else."""
    import unicodedata
    if text.isascii() and text.isprintable():
        return text
    folded = unicodedata.normalize("NFKD", text.replace("ł", "l").replace("Ł", "L"))
    kept = "".join(c for c in folded if not unicodedata.combining(c))
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in kept)


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return bool(np.isclose(a, b, rtol=1e-12, atol=0.0))
    return str(a).strip() == str(b).strip()


def _base_header(frame: Frame) -> fits.Header:
    """The image HDU's header, plus primary-HDU cards it lacks (INHERIT convention).

    An image in an extension usually leaves the telescope keywords in an empty
    primary HDU; they are carried over so the written file stands on its own.
    Old bhcore provenance lines are dropped so re-standardising does not pile up.
    """
    header = frame.header.copy()
    for key in ("XTENSION", "PCOUNT", "GCOUNT"):
        header.remove(key, ignore_missing=True, remove_all=True)
    if frame.hdu_index > 0 and frame.other_headers:
        primary = frame.other_headers[0]
        for card in primary.cards:
            if card.keyword not in _STRUCTURAL and card.keyword not in header:
                header.append(card)
    history = [str(h) for h in header.get("HISTORY", [])]
    if any(h.startswith(_PROVENANCE_TAGS) for h in history):
        header.remove("HISTORY", remove_all=True)
        for line in history:
            if not line.startswith(_PROVENANCE_TAGS):
                header.add_history(line)
    return header


def _fit_comment(key: str, value, comment: str) -> str:
    """The comment cut to what fits on the card (astropy would warn and cut it)."""
    if not comment:
        return ""
    used = max(len(fits.Card(key, value).image.rstrip()), 30)   # value field >= 20
    room = 80 - used - 3
    return comment[:room] if room > 0 and used <= 80 else ""


def _stamp_history(header: fits.Header, set_by: dict, overrides: list[str]) -> None:
    by_plugin: dict[str, list[str]] = {}
    for key, plugin in set_by.items():
        by_plugin.setdefault(plugin, []).append(key)
    for plugin, keys in by_plugin.items():
        prefix = f"BHSETBY {plugin}: "
        for chunk in textwrap.wrap(", ".join(keys), 72 - len(prefix),
                                   break_on_hyphens=False, break_long_words=False):
            header.add_history(prefix + chunk.rstrip(","))
    for line in overrides:
        header.add_history(f"BHOVERRD {line}"[:72])
