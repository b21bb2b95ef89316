"""Fetch, verify and cache model weights.

Sources are tried in order: the user's path (used in place), the cache, mirrors, the spec's URLs,
then the offline ncnn conversion. A file enters the cache only by ``os.replace`` of a verified
temporary file, under a per-file ``flock``: replicas on one node download it once, never see half a
file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.errors import InvalidOptionError, WeightsUnavailableError, WeightsVerificationError
from models.registry import NcnnSource, WeightsSource

logger = logging.getLogger(__name__)

Converter = Callable[[NcnnSource, Path], None]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_USER_AGENT = "superres-weights/0.1"
_MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class FetchedWeights:
    path: Path
    origin: str  # "path" | "cache" | "mirror" | "url" | "offline"
    detail: str  # URL, path or package:stem


class _Retryable(Exception):
    """A transient failure: the same URL may work on the next attempt."""


class _SourceFailed(Exception):
    """This URL cannot serve the file (HTTP 404, bad scheme, retries exhausted)."""


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
        if timeout_s <= 0:
            raise InvalidOptionError(f"timeout_s must be greater than 0, got {timeout_s}")
        if retries < 0:
            raise InvalidOptionError(f"retries must be 0 or more, got {retries}")
        if backoff_s < 0:
            raise InvalidOptionError(f"backoff_s must be 0 or more, got {backoff_s}")
        self.cache_dir = Path(cache_dir)
        self.mirrors = tuple(m.rstrip("/") for m in mirrors)
        self.timeout_s = timeout_s
        self.retries = retries
        self.allow_download = allow_download
        self.backoff_s = backoff_s
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
            try:
                self._download(url, final, pin, source.size)
            except _SourceFailed as e:
                tried.append(f"{origin} {url}: {e}")
            except WeightsVerificationError as e:
                mismatch = True
                tried.append(f"{origin} {url}: {e}")
            else:
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
        tmp = dest.with_name(dest.name + ".part")
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

    # --- download ---------------------------------------------------------------------------

    def _download(self, url: str, final: Path, pin: str, size: int | None) -> None:
        """Download ``url`` into ``final`` through ``<final>.part``, resuming and verifying."""
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise _SourceFailed("unsupported URL scheme (http and https only)")
        part = final.with_name(final.name + ".part")
        attempts = 1 + self.retries
        restarted = False
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S))
            try:
                digest, nbytes, resumed = self._transfer(url, part, size)
            except _Retryable as e:
                last = str(e)
                logger.warning("weights %s: attempt %d/%d: %s", url, attempt + 1, attempts, e)
                continue
            except WeightsVerificationError:
                part.unlink(missing_ok=True)
                raise
            reason = _compare(digest, nbytes, pin, size)
            if reason is None:
                _commit(part, final)
                return
            part.unlink(missing_ok=True)
            if resumed and not restarted:
                # The bytes kept from an earlier transfer may be the culprit: one clean download.
                restarted = True
                last = f"resumed download {reason}"
                logger.warning("weights %s: %s; restarting from byte 0", url, last)
                continue
            raise WeightsVerificationError(f"downloaded file {reason}")
        raise _SourceFailed(f"{last} (after {attempts} attempts)")

    def _transfer(self, url: str, part: Path, size: int | None) -> tuple[str, int, bool]:
        """One HTTP request appending to ``part``: (sha256 of the whole part, its size, resumed)."""
        offset = part.stat().st_size if part.is_file() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        digest = hashlib.sha256()
        if offset:
            with part.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
            if offset == size:  # a finished transfer whose commit was interrupted
                return digest.hexdigest(), offset, True
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:
                part.unlink(missing_ok=True)
                raise _Retryable("HTTP 416 for the resumed range; restarting") from None
            if e.code in _RETRY_STATUSES:
                raise _Retryable(f"HTTP {e.code} {e.reason}") from None
            raise _SourceFailed(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _Retryable(_describe(e)) from None
        with response:
            total, offset = _expected_total(response, offset, part)
            if offset == 0:
                digest = hashlib.sha256()
            if size is not None and total is not None and total != size:
                raise WeightsVerificationError(f"server reports {total} bytes, expected {size}")
            received = 0
            with part.open("ab" if offset else "wb") as f:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (http.client.HTTPException, OSError) as e:
                        raise _Retryable(
                            f"connection lost after {offset + received} bytes: {_describe(e)}"
                        ) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if size is not None and offset + received > size:
                        raise WeightsVerificationError(f"server sent more than {size} bytes")
                f.flush()
                os.fsync(f.fileno())
        if total is not None and offset + received < total:
            # http.client returns a short body silently when the server closes early.
            raise _Retryable(f"connection closed after {offset + received} of {total} bytes")
        return digest.hexdigest(), offset + received, offset > 0

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


def _compare(digest: str, nbytes: int, pin: str, size: int | None) -> str | None:
    if size is not None and nbytes != size:
        return f"has {nbytes} bytes, expected {size}"
    if digest != pin:
        return f"has sha256 {digest}, expected {pin}"
    return None


def _mismatch(path: Path, pin: str, size: int | None) -> str | None:
    nbytes = path.stat().st_size
    if size is not None and nbytes != size:  # cheap check first: no hashing of a wrong-size file
        return f"{path} has {nbytes} bytes, expected {size}"
    reason = _compare(sha256_file(path), nbytes, pin, size)
    return None if reason is None else f"{path} {reason}"


def _expected_total(
    response: http.client.HTTPResponse, offset: int, part: Path
) -> tuple[int | None, int]:
    """(total file size if the server says, offset the body starts at) for a 200/206 response."""
    length = response.headers.get("Content-Length")
    body = int(length) if length and length.isdigit() else None
    if response.status == 200:
        if offset:
            logger.info("server ignored the Range request; downloading %s from byte 0", part.stem)
        return body, 0
    if response.status == 206 and offset:
        match = re.fullmatch(
            r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "")
        )
        if match is None or int(match.group(1)) != offset:
            part.unlink(missing_ok=True)
            raise _Retryable(f"bad Content-Range {response.headers.get('Content-Range')!r}")
        if match.group(3) != "*":
            return int(match.group(3)), offset
        return (offset + body if body is not None else None), offset
    raise _SourceFailed(f"unexpected HTTP {response.status}")


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        reason = error.reason
        return str(reason) if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    return f"{type(error).__name__}: {error}"


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
