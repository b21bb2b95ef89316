"""API keys: who may call ``/v1/*``, and with which quotas.

A client sends ``Authorization: Bearer <key>``. A key is ``sr_`` and 43 URL-safe characters (256
random bits), shown once when it is created and never stored: the key file keeps its SHA-256, which
is enough at rest for a random key of that length (there is nothing to guess). Checking a key hashes
it and compares the digest with every record in constant time, whichever one matches.

The key file (``SUPERRES_API_KEYS_FILE``; none configured = auth off) is JSON lines, UTF-8, one key
a line; blank lines and lines starting with ``#`` are skipped::

    {"name": "alice", "sha256": "<64 hex digits>", "created_at": "2026-12-01T10:00:00Z",
     "limits": {"rate": 2.0, "burst": 10, "concurrency": 4}}

(one line in the file). ``name`` is 1-64 of ``A-Z a-z 0-9 . _ -``, unique in the file. ``limits``
(requests a second refilling a bucket of ``burst``; requests in progress at a time) may leave out
any field, or be left out: the ring's defaults fill the gaps. ``python -m serve_app keys
create|list|revoke`` writes the file (mode 0600, replaced atomically, one writer at a time); a
running ``KeyRing`` rereads it when it changes, so a revoked key stops working within
``reload_every_s``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deployments.quota import QuotaLimits

log = logging.getLogger("ray.serve")

KEY_PREFIX = "sr_"
DEFAULT_LIMITS = QuotaLimits()
ANONYMOUS_NAME = "anonymous"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{1,512}=*")  # RFC 6750 b64token, bounded


class Unauthorized(Exception):
    """No key, a malformed ``Authorization`` header, or a key that is not (or no longer) valid.
    HTTP 401 with the header ``WWW-Authenticate: <www_authenticate>``."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        # RFC 6750 §3: no error code when the request carried no credentials at all.
        self.www_authenticate = 'Bearer realm="superres"' + (f', error="{error}"' if error else "")

    def __reduce__(self) -> tuple[type[Unauthorized], tuple[str, str | None]]:
        return type(self), (str(self), self.error)


class KeyFileError(Exception):
    """The key file is missing or malformed; the message names the file and the line."""


class KeyNameError(ValueError):
    """``keys create`` with a name already used, or ``keys revoke`` with an unknown name."""


class KeyRecord(BaseModel):
    """One key as stored: its name, the SHA-256 of the key (never the key), its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", repr=False)
    limits: QuotaLimits = Field(default_factory=QuotaLimits)
    created_at: datetime | None = None

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.limits)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name and limits, or ``ANONYMOUS`` (no limits) when auth is off."""

    name: str
    limits: QuotaLimits | None

    @property
    def anonymous(self) -> bool:
        return self.limits is None


ANONYMOUS = Principal(ANONYMOUS_NAME, None)


@dataclass(frozen=True)
class NewKey:
    """What ``create_key`` returns: the record written and the key itself, to show once."""

    record: KeyRecord
    key: str = field(repr=False)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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


def parse_keys(text: str, source: str, defaults: QuotaLimits = DEFAULT_LIMITS) -> list[KeyRecord]:
    """The records of a key file's text; ``KeyFileError`` naming ``source`` and the line."""
    records: list[KeyRecord] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise KeyFileError(f"{where}: expected a JSON object")
        try:
            limits = raw.get("limits") or {}
            if not isinstance(limits, dict):
                raise KeyFileError(f"{where}: limits must be a JSON object")
            merged = QuotaLimits.model_validate({**defaults.model_dump(), **limits})
            record = KeyRecord.model_validate({**raw, "limits": merged})
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}"
                for err in exc.errors()
            )
            raise KeyFileError(f"{where}: {detail}") from None
        if record.name in seen:
            raise KeyFileError(
                f"{where}: the name {record.name!r} is already used on line {seen[record.name]}"
            )
        seen[record.name] = number
        records.append(record)
    return records


def read_keys(path: Path | str, defaults: QuotaLimits = DEFAULT_LIMITS) -> list[KeyRecord]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no such key file; create a key with "
            f"'python -m serve_app keys create NAME --file {path}'"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc}") from None
    return parse_keys(text, str(path), defaults)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[str]:
    """The file's current text (empty if absent), with the folder locked against other writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        yield text
    finally:
        os.close(folder)  # also drops the lock


def _replace(path: Path, text: str) -> None:
    """Writes ``text`` to a new file (mode 0600) beside ``path`` and moves it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(path: Path | str, name: str, limits: QuotaLimits | None = None) -> NewKey:
    """Adds a key named ``name`` to the file (created if absent) and returns it, the one time it
    exists in plain text. ``KeyNameError`` if the name is taken or reserved."""
    path = Path(path)
    if name == ANONYMOUS_NAME:
        raise KeyNameError(f"{ANONYMOUS_NAME!r} is reserved for unauthenticated calls")
    key = new_key()
    try:
        record = KeyRecord(
            name=name,
            sha256=hash_key(key),
            limits=limits or DEFAULT_LIMITS,
            created_at=datetime.now(UTC).replace(microsecond=0),
        )
    except ValidationError:
        raise KeyNameError(
            f"{name!r} is not a valid key name: use 1-64 letters, digits, '.', '_' or '-'"
        ) from None
    with _locked(path) as text:
        if any(r.name == name for r in parse_keys(text, str(path))):
            raise KeyNameError(f"a key named {name!r} already exists in {path}")
        if text and not text.endswith("\n"):
            text += "\n"
        _replace(path, text + record.model_dump_json(exclude_none=True) + "\n")
    return NewKey(record, key)


def revoke_key(path: Path | str, name: str) -> KeyRecord:
    """Removes the key named ``name`` from the file; the other lines stay as they are."""
    path = Path(path)
    with _locked(path) as text:
        records = parse_keys(text, str(path))  # refuses to rewrite a malformed file
        revoked = next((r for r in records if r.name == name), None)
        if revoked is None:
            raise KeyNameError(f"no key named {name!r} in {path}")
        kept = [line for line in text.splitlines() if not _names(line, name)]
        _replace(path, "".join(f"{line}\n" for line in kept))
    return revoked


def _names(line: str, name: str) -> bool:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return False
    return bool(json.loads(stripped).get("name") == name)


# --- checking keys ------------------------------------------------------------------------------


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
    ) -> KeyRing:
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
