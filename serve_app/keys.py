"""The API key file: records of hashed keys and their quota limits, and the writes that
``python -m serve_app keys create|list|revoke`` makes.

A key is ``sr_`` and 43 URL-safe characters (256 random bits), shown once when it is created and
never stored: the file keeps its SHA-256, which is enough at rest for a random key of that length
(there is nothing to guess).

The key file (``SUPERRES_API_KEYS_FILE``; none configured = auth off) is JSON lines, UTF-8, one key
a line; blank lines and lines starting with ``#`` are skipped::

    {"name": "alice", "sha256": "<64 hex digits>", "created_at": "2026-12-01T10:00:00Z",
     "limits": {"rate": 2.0, "burst": 10, "concurrency": 4}}

(one line in the file). ``name`` is 1-64 of ``A-Z a-z 0-9 . _ -``, unique in the file. ``limits``
(requests a second refilling a bucket of ``burst``; requests in progress at a time) may leave out
any field, or be left out: the reader's defaults fill the gaps. Writes replace the file atomically
(mode 0600), one writer at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deployments.quota import QuotaLimits

log = logging.getLogger("ray.serve")

KEY_PREFIX = "sr_"
DEFAULT_LIMITS = QuotaLimits()
ANONYMOUS_NAME = "anonymous"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
FINGERPRINT_HEX = 16  # of the key's SHA-256: enough to tell keys apart, nothing to attack


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
        return Principal(self.name, self.limits, self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """Names this key (not its name: a key created again under one name gets another)."""
        return self.sha256[:FINGERPRINT_HEX]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name, limits and fingerprint, or ``ANONYMOUS`` (no limits, no
    key) when auth is off."""

    name: str
    limits: QuotaLimits | None
    key_id: str | None = field(default=None, repr=False)

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
