"""Fetch, verify and cache model weights.

Sources are tried in order: the user's path (used in place), the cache, mirrors, the spec's URLs,
then the offline ncnn conversion. A file enters the cache only by ``os.replace`` of a verified
temporary file, under a per-file ``flock``: replicas on one node download it once, never see half a
file. HTTP transfers (resume, retries, size limits) are ``models.download``'s job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.download import Downloader, DownloadFailed
from models.errors import WeightsUnavailableError, WeightsVerificationError
from models.registry import NcnnSource, WeightsSource

logger = logging.getLogger(__name__)

Converter = Callable[[NcnnSource, Path], None]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FetchedWeights:
    path: Path
    origin: str  # "path" | "cache" | "mirror" | "url" | "offline"
    detail: str  # URL, path or package:stem


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _convert_ncnn(source: NcnnSource, dest: Path) -> None:
    from models.ncnn_import import write_converted  # heavy (ncnn, torch): only when needed

    write_converted(source, dest)


class WeightsStore:
    """Weights files in ``cache_dir``, fetched on demand from the sources of a ``WeightsSource``."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        mirrors: Sequence[str] = (),
        timeout_s: float = 30.0,
        retries: int = 3,
        allow_download: bool = True,
        converter: Converter | None = None,
        backoff_s: float = 1.0,
    ) -> None:
        self._downloader = Downloader(timeout_s, retries, backoff_s, logger)
        self.cache_dir = Path(cache_dir)
        self.mirrors = tuple(m.rstrip("/") for m in mirrors)
        self.allow_download = allow_download
        self._converter: Converter = converter or _convert_ncnn

    # --- public -----------------------------------------------------------------------------

    def cached(self, source: WeightsSource) -> FetchedWeights | None:
        """A verified local copy (user path or cache), or None. No network, deletes nothing."""
        _check_filename(source.filename)
        pin = _pin(source.sha256)
        if source.path is not None and pin is not None:
            path = Path(source.path).expanduser()
            if path.is_file() and _mismatch(path, pin, source.size) is None:
                return FetchedWeights(path, "path", str(path))
        return self._cache_hit(source, evict=False)

    def fetch(self, source: WeightsSource) -> FetchedWeights:
        """The verified weights file, from the first source that serves it (see the module doc).

        Raises WeightsVerificationError for a user path that does not match, or when a source
        served wrong bytes and no other worked; otherwise WeightsUnavailableError, listing every
        source tried and why it failed.
        """
        name = _check_filename(source.filename)
        started = time.monotonic()
        tried: list[str] = []
        if source.path is not None:
            hit = self._from_path(source, tried)
            if hit is not None:
                return _served(name, hit, started)
        hit = self._cache_hit(source, evict=False)
        if hit is not None:
            return _served(name, hit, started)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(self.cache_dir / f"{name}.lock"):
            # Another replica may have fetched it meanwhile; corrupt files are removed only here.
            hit = self._cache_hit(source, evict=True)
            if hit is None:
                hit = self._fetch_locked(source, tried)
        return _served(name, hit, started)

    # --- sources ----------------------------------------------------------------------------

    def _from_path(self, source: WeightsSource, tried: list[str]) -> FetchedWeights | None:
        path = Path(source.path or "").expanduser()
        pin = _pin(source.sha256)
        if not path.is_file():
            tried.append(f"path {path}: not found")
            return None
        if pin is None:
            tried.append(f"no sha256 pinned for path {path}; configure one")
            return None
        reason = _mismatch(path, pin, source.size)
        if reason is not None:
            raise WeightsVerificationError(f"weights {source.filename!r}: user file {reason}")
        return FetchedWeights(path, "path", str(path))

    def _cache_hit(self, source: WeightsSource, *, evict: bool) -> FetchedWeights | None:
        candidates: list[tuple[Path, str | None, int | None]] = [
            (self.cache_dir / source.filename, _pin(source.sha256), source.size)
        ]
        if source.ncnn is not None:
            candidates.append((self._offline_path(source), _pin(source.ncnn.sha256), None))
        for path, pin, size in candidates:
            if pin is None or not path.is_file():
                continue
            reason = _mismatch(path, pin, size)
            if reason is None:
                return FetchedWeights(path, "cache", str(path))
            if evict:
                logger.warning("removing corrupt cached weights: %s", reason)
                path.unlink(missing_ok=True)
        return None

    def _fetch_locked(self, source: WeightsSource, tried: list[str]) -> FetchedWeights:
        pin = _pin(source.sha256)
        final = self.cache_dir / source.filename
        mismatch = False
        candidates = [
            ("mirror", f"{m}/{urllib.parse.quote(source.filename)}") for m in self.mirrors
        ]
        candidates += [("url", url) for url in source.urls]
        for origin, url in candidates:
            if pin is None:
                tried.append(f"no sha256 pinned for URL {url}; configure one")
                continue
            if not self.allow_download:
                tried.append(f"{origin} {url}: downloads are disabled")
                continue
            part = _part(final)
            try:
                self._downloader.download(url, part, sha256=pin, size=source.size)
            except DownloadFailed as e:
                tried.append(f"{origin} {url}: {e}")
            except WeightsVerificationError as e:
                mismatch = True
                tried.append(f"{origin} {url}: {e}")
            else:
                _commit(part, final)
                return FetchedWeights(final, origin, url)
        if source.ncnn is not None:
            hit, reason, bad = self._convert(source, source.ncnn)
            if hit is not None:
                return hit
            tried.append(reason)
            mismatch = mismatch or bad
        if not tried:
            tried.append("no path, URL, mirror or offline source is configured")
        message = f"weights {source.filename!r}: no source could be used: " + "; ".join(tried)
        raise WeightsVerificationError(message) if mismatch else WeightsUnavailableError(message)

    def _offline_path(self, source: WeightsSource) -> Path:
        # The conversion is a different file (other format, other hash) from the .pth it stands for.
        return self.cache_dir / f"{Path(source.filename).stem}.ncnn.safetensors"

    def _convert(
        self, source: WeightsSource, ncnn: NcnnSource
    ) -> tuple[FetchedWeights | None, str, bool]:
        """(hit, reason it failed, whether the failure is a mismatch)."""
        label = f"{ncnn.package}:{ncnn.stem}"
        pin = _pin(ncnn.sha256)
        if pin is None:
            return (
                None,
                f"offline {label}: no sha256 pinned for the converted file; configure one",
                False,
            )
        dest = self._offline_path(source)
        tmp = _part(dest)
        tmp.unlink(missing_ok=True)
        try:
            self._converter(ncnn, tmp)
            reason = _mismatch(tmp, pin, None) if tmp.is_file() else "the converter wrote no file"
        except Exception as e:  # any converter failure is reported in the error, not swallowed
            tmp.unlink(missing_ok=True)
            return None, f"offline {label}: {type(e).__name__}: {e}", False
        if reason is not None:
            tmp.unlink(missing_ok=True)
            return None, f"offline {label}: converted file {reason}", True
        tmp.chmod(0o644)  # converters may write 0600 temp files; replicas may run as other users
        _commit(tmp, dest)
        return FetchedWeights(dest, "offline", label), "", False

    # --- locking ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, lock_path: Path) -> Iterator[None]:
        # flock locks belong to the open file description: threads and processes both exclude.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another fetch of %s (lock %s)", lock_path.stem, lock_path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# --- helpers --------------------------------------------------------------------------------


def _check_filename(name: str) -> str:
    if (
        name in ("", ".", "..")
        or any(c in name for c in "/\\\0")
        or name.endswith((".part", ".lock"))
    ):
        raise WeightsUnavailableError(
            f"invalid weights filename {name!r}: must be a plain file name"
        )
    return name


def _pin(sha256: str | None) -> str | None:
    """The pinned hash in lower case, or None when there is no usable pin (None, "TODO", ...)."""
    if sha256 is None:
        return None
    pin = sha256.strip().lower()
    return pin if _HEX64.fullmatch(pin) else None


def _mismatch(path: Path, pin: str, size: int | None) -> str | None:
    nbytes = path.stat().st_size
    if size is not None and nbytes != size:  # cheap check first: no hashing of a wrong-size file
        return f"{path} has {nbytes} bytes, expected {size}"
    digest = sha256_file(path)
    return None if digest == pin else f"{path} has sha256 {digest}, expected {pin}"


def _part(final: Path) -> Path:
    """Where ``final`` is written before its atomic commit (``_check_filename`` refuses the name)."""
    return final.with_name(final.name + ".part")


def _commit(tmp: Path, final: Path) -> None:
    """Make a verified file visible atomically and durably."""
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _served(name: str, hit: FetchedWeights, started: float) -> FetchedWeights:
    logger.info(
        "weights %s served from %s %s (%d bytes, %.2f s)",
        name,
        hit.origin,
        hit.detail,
        hit.path.stat().st_size,
        time.monotonic() - started,
    )
    return hit
