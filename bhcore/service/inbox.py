"""The FITS manager: watch the inbox and register each complete new frame as a job.

Why polling with two tests of completeness: uploads arrive over scp, rsync, NFS
and SMB, where inotify is unreliable and a file is visible while still being
written. A frame is taken only when (1) its size and mtime have not changed for
``settle`` seconds and (2) it ends where its FITS headers say it must (every
HDU's data present, 2880-byte blocks; for .gz/.bz2 a complete stream). Writers
that can should use the ``.part`` convention (write ``x.fits.part``, rename to
``x.fits``): ``.part`` and hidden files are never taken. A file that stays
incomplete for ``give_up`` seconds is registered anyway, so that it fails with
the reader's one-line reason instead of waiting silently forever.
"""
from __future__ import annotations

import bz2
import gzip
import logging
import time
import zlib
from pathlib import Path

from ..runner import safe_stem
from .stages import content_hash

log = logging.getLogger(__name__)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fts.gz",
                 ".fits.bz2", ".fit.bz2")
BLOCK = 2880


def candidates(inbox: Path):
    """Frames in the inbox (any depth), skipping hidden, ``.part`` and other files."""
    for path in sorted(inbox.rglob("*")):
        rel = path.relative_to(inbox)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.name.lower().endswith(FITS_SUFFIXES):
            yield path


def fits_complete(path) -> bool:
    """True when every HDU's header and data are present and the file ends there."""
    path = Path(path)
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else bz2.open if name.endswith(".bz2") \
        else open
    try:
        with opener(path, "rb") as fh:
            return _walk(fh)
    except (OSError, EOFError, zlib.error, ValueError):
        return False


def _walk(fh) -> bool:
    n_hdus = 0
    while True:
        block = fh.read(BLOCK)
        if not block:
            return n_hdus > 0
        cards = {}
        while True:
            if len(block) < BLOCK:
                return False
            ended = False
            for i in range(0, BLOCK, 80):
                card = block[i:i + 80].decode("ascii", "replace")
                key = card[:8].strip()
                if key == "END":
                    ended = True
                    break
                if card[8:10] == "= ":
                    cards[key] = card[10:].split("/")[0].strip().strip("'").strip()
            if ended:
                break
            block = fh.read(BLOCK)
        first = "SIMPLE" if n_hdus == 0 else "XTENSION"
        if first not in cards:
            return False
        try:
            bitpix, naxis = abs(int(cards["BITPIX"])), int(cards["NAXIS"])
            axes = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
            pcount, gcount = int(cards.get("PCOUNT", 0)), int(cards.get("GCOUNT", 1))
        except (KeyError, ValueError):
            return False
        size = 0
        if naxis:
            product = 1
            for n in (axes[1:] if axes and axes[0] == 0 else axes):   # random groups
                product *= n
            size = bitpix // 8 * gcount * (pcount + product)
        if not _skip(fh, -(-size // BLOCK) * BLOCK):
            return False
        n_hdus += 1


def _skip(fh, n: int) -> bool:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            return False
        n -= len(chunk)
    return True


class InboxWatcher:
    """One scan at a time: stable and complete files become jobs, once per content."""

    def __init__(self, inbox, queue, *, default_oname=None, settle: float = 2.0,
                 give_up: float = 60.0, clock=time.monotonic):
        self.inbox, self.queue = Path(inbox), queue
        self.default_oname = default_oname
        self.settle, self.give_up, self.clock = settle, give_up, clock
        self.pending: dict[Path, tuple] = {}      # path -> ((size, mtime), stable since)
        self.seen: set = set()                    # (path, size, mtime) already handled

    def oname_for(self, path: Path) -> str | None:
        """``inbox/<ONAME>/frame.fits`` names its camera; else the default."""
        rel = path.relative_to(self.inbox)
        return rel.parts[0] if len(rel.parts) > 1 else self.default_oname

    def scan(self) -> list[int]:
        """Register what is ready now; returns the new job ids."""
        now, new = self.clock(), []
        present = set()
        for path in candidates(self.inbox):
            present.add(path)
            try:
                st = path.stat()
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if (path, *key) in self.seen:
                continue
            before = self.pending.get(path)
            if before is None or before[0] != key:
                self.pending[path] = (key, now)
                continue
            waited = now - before[1]
            if waited < self.settle:
                continue
            if not fits_complete(path) and waited < self.give_up:
                continue
            job = self._register(path, key)
            if job is not None:
                new.append(job)
        for gone in set(self.pending) - present:
            del self.pending[gone]
        return new

    def _register(self, path: Path, key) -> int | None:
        if self.queue.known(str(path), *key):
            self.seen.add((path, *key))
            return None
        digest = content_hash(path)
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != key:     # changed while hashing: wait again
            self.pending[path] = ((st.st_size, st.st_mtime_ns), self.clock())
            return None
        job = self.queue.register(str(path), digest, key[0], key[1], self.oname_for(path),
                                  safe_stem(path))
        self.seen.add((path, *key))
        self.pending.pop(path, None)
        if job is None:
            log.info("%s: same content as an earlier frame, not queued again", path.name)
        else:
            log.info("%s: registered as job %d", path.name, job)
        return job
