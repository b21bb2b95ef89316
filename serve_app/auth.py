"""API keys: who may call ``/v1/*``, and with which quotas.

A client sends ``Authorization: Bearer <key>``. Checking a key hashes it and compares the digest
with every record of the key file (``serve_app.keys``) in constant time, whichever one matches. A
running ``KeyRing`` rereads the file when it changes, so a revoked key stops working within
``reload_every_s``. ``key_dependency`` is the one FastAPI dependency the ``/v1`` routes share.
"""

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deployments.quota import QuotaLimits
from serve_app.keys import (
    ANONYMOUS,
    DEFAULT_LIMITS,
    KeyFileError,
    KeyRecord,
    Principal,
    hash_key,
    read_keys,
)

log = logging.getLogger("ray.serve")

_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{1,512}=*")  # RFC 6750 b64token, bounded


class Unauthorized(Exception):
    """No key, a malformed ``Authorization`` header, or a key that is not (or no longer) valid.
    HTTP 401 with the header ``WWW-Authenticate: <www_authenticate>``."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        # RFC 6750 §3: no error code when the request carried no credentials at all.
        self.www_authenticate = 'Bearer realm="superres"' + (f', error="{error}"' if error else "")

    def __reduce__(self) -> tuple[type["Unauthorized"], tuple[str, str | None]]:
        return type(self), (str(self), self.error)


def bearer_token(authorization: str | None) -> str:
    """The key in an ``Authorization: Bearer <key>`` value; ``Unauthorized`` when absent or
    malformed."""
    if authorization is None or not authorization.strip():
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        raise Unauthorized(
            "malformed Authorization header: expected 'Bearer <key>'", "invalid_request"
        )
    return token


# --- the file ----------------------------------------------------------------------------------


class KeyRing:
    """The keys that may call, loaded from a file and reread when the file changes."""

    def __init__(
        self,
        records: Iterable[KeyRecord],
        *,
        path: Path | None = None,
        defaults: QuotaLimits = DEFAULT_LIMITS,
        reload_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = tuple(records)
        self._path = path
        self._defaults = defaults
        self._reload_every_s = reload_every_s
        self._clock = clock
        self._checked = clock()
        self._stamp = _stamp(path) if path is not None else None

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        defaults: QuotaLimits = DEFAULT_LIMITS,
        reload_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> "KeyRing":
        """``KeyFileError`` (naming the line) if the file is missing or malformed."""
        path = Path(path)
        stamp = _stamp(path)
        records = read_keys(path, defaults)
        if not records:
            log.warning("the key file %s holds no keys: every /v1 call will be refused", path)
        ring = cls(
            records, path=path, defaults=defaults, reload_every_s=reload_every_s, clock=clock
        )
        ring._stamp = stamp
        return ring

    @property
    def names(self) -> list[str]:
        return [r.name for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"KeyRing({len(self._records)} keys, path={self._path})"

    def authenticate(self, authorization: str | None) -> KeyRecord:
        """The record of the key in an ``Authorization`` header value, else ``Unauthorized``."""
        token = bearer_token(authorization)
        self.refresh()
        digest = hash_key(token)
        found: KeyRecord | None = None
        for record in self._records:  # every record, so the time taken says nothing of which
            if hmac.compare_digest(digest, record.sha256) and found is None:
                found = record
        if found is None:
            raise Unauthorized("the API key is not valid", "invalid_token")
        return found

    def refresh(self, *, force: bool = False) -> bool:
        """Rereads the file if it changed (checked at most every ``reload_every_s``); True if
        the keys were replaced. A file that became malformed or vanished keeps the keys in use."""
        if self._path is None:
            return False
        now = self._clock()
        if not force and now - self._checked < self._reload_every_s:
            return False
        self._checked = now
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return False
        try:
            records = read_keys(self._path, self._defaults)
        except KeyFileError as exc:
            log.error("keeping the %d keys in use: %s", len(self._records), exc)
            self._stamp = stamp  # said once per change of the file, not every few seconds
            return False
        self._records, self._stamp = tuple(records), stamp
        log.info("reloaded %d API keys from %s", len(records), self._path)
        return True


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# --- FastAPI ------------------------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `python -m serve_app keys create`, as `Bearer <key>`.",
)

RingSource = KeyRing | Callable[[], KeyRing | None] | None


def key_dependency(ring: RingSource) -> Callable[..., Awaitable[Principal]]:
    """One FastAPI dependency for the ``/v1`` routes: the caller's ``Principal``, also left in
    ``request.state.principal``; raises ``Unauthorized``. ``ring`` is the ``KeyRing``, ``None``
    for auth off (every caller is ``ANONYMOUS``), or a function returning either at request time
    (for a Serve ingress whose ring is made in its constructor)."""

    if ring is None:

        async def anonymous(request: Request) -> Principal:
            request.state.principal = ANONYMOUS
            return ANONYMOUS

        return anonymous

    async def require_key(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        current = ring() if callable(ring) else ring
        principal = (
            ANONYMOUS
            if current is None
            else current.authenticate(request.headers.get("authorization")).principal
        )
        request.state.principal = principal
        return principal

    return require_key
