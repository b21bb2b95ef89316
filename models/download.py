"""Download one file over HTTP(S) into a partial file, resuming, retrying and verifying it.

Contract of ``Downloader.download(url, part, sha256=..., size=...)``:

* Only ``http`` and ``https`` URLs; any other scheme fails at once with ``DownloadFailed``.
* Bytes already in ``part`` are kept and the rest is asked for with a ``Range`` request; a server
  that ignores ``Range`` is read from byte 0. A resumed file that fails verification is discarded
  and downloaded once more from byte 0.
* Retried, after ``backoff_s * 2**(n-1)`` seconds or the server's ``Retry-After`` (in seconds)
  if longer, at most 30 s either way: connection errors and timeouts, HTTP 408/425/429/500/502/503/504, a 416 for a resumed range, a bad
  ``Content-Range``, and a body cut short. Any other HTTP status (404, ...) is not retried.
* Raises ``DownloadFailed`` when this URL cannot serve the file (not retried, or ``1 + retries``
  attempts exhausted; the message ends "(after N attempts)"), and ``WeightsVerificationError``
  when the server announces or sends a size other than ``size`` (checked before and while
  reading, so a wrong file is not read to its end) or the bytes do not hash to ``sha256``; ``part``
  is removed then.
* On return ``part`` holds exactly the verified bytes, flushed to disk; moving it into place is the
  caller's job. It reports only through ``logger``: a warning for each failed attempt and restart,
  and an info line when a server ignores ``Range``. There is no progress callback.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import InvalidOptionError, WeightsVerificationError

_CHUNK = 1 << 20
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_USER_AGENT = "superres-weights/0.1"
_MAX_BACKOFF_S = 30.0


class DownloadFailed(Exception):
    """This URL cannot serve the file (HTTP 404, bad scheme, retries exhausted); says why."""


class _Retryable(Exception):
    """A transient failure: the same URL may work on the next attempt, ``retry_after`` s later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Downloader:
    """HTTP(S) downloads with these limits (see the module doc); threads may share one."""

    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger(__name__))

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise InvalidOptionError(f"timeout_s must be greater than 0, got {self.timeout_s}")
        if self.retries < 0:
            raise InvalidOptionError(f"retries must be 0 or more, got {self.retries}")
        if self.backoff_s < 0:
            raise InvalidOptionError(f"backoff_s must be 0 or more, got {self.backoff_s}")

    def download(self, url: str, part: Path, *, sha256: str, size: int | None) -> None:
        """Fill ``part`` with the bytes of ``url`` that match ``sha256`` (lower-case hex) and
        ``size`` (None: any size), resuming from what ``part`` holds (see the module doc)."""
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise DownloadFailed("unsupported URL scheme (http and https only)")
        attempts = 1 + self.retries
        restarted = False
        last = ""
        asked = 0.0  # the server's Retry-After for the next attempt
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(max(self.backoff_s * 2 ** (attempt - 1), asked), _MAX_BACKOFF_S))
                asked = 0.0
            try:
                digest, nbytes, resumed = self._transfer(url, part, size)
            except _Retryable as e:
                last = str(e)
                asked = e.retry_after or 0.0
                self.logger.warning("weights %s: attempt %d/%d: %s", url, attempt + 1, attempts, e)
                continue
            except WeightsVerificationError:
                part.unlink(missing_ok=True)
                raise
            reason = _compare(digest, nbytes, sha256, size)
            if reason is None:
                return
            part.unlink(missing_ok=True)
            if resumed and not restarted:
                # The bytes kept from an earlier transfer may be the culprit: one clean download.
                restarted = True
                last = f"resumed download {reason}"
                self.logger.warning("weights %s: %s; restarting from byte 0", url, last)
                continue
            raise WeightsVerificationError(f"downloaded file {reason}")
        raise DownloadFailed(f"{last} (after {attempts} attempts)")

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
                hint = _seconds(e.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {e.code} {e.reason}", hint) from None
            raise DownloadFailed(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _Retryable(_describe(e)) from None
        with response:
            total, offset = self._expected_total(response, offset, part)
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

    def _expected_total(
        self, response: http.client.HTTPResponse, offset: int, part: Path
    ) -> tuple[int | None, int]:
        """(total file size if the server says, offset the body starts at) for a 200/206 response."""
        length = response.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        if response.status == 200:
            if offset:
                self.logger.info(
                    "server ignored the Range request; downloading %s from byte 0", part.stem
                )
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
        raise DownloadFailed(f"unexpected HTTP {response.status}")


def _compare(digest: str, nbytes: int, pin: str, size: int | None) -> str | None:
    if size is not None and nbytes != size:
        return f"has {nbytes} bytes, expected {size}"
    if digest != pin:
        return f"has sha256 {digest}, expected {pin}"
    return None


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After of delay-seconds; an HTTP date or nonsense is no hint."""
    try:
        return None if retry_after is None else max(0.0, float(retry_after))
    except ValueError:
        return None


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        reason = error.reason
        return str(reason) if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    return f"{type(error).__name__}: {error}"
