"""Durable jobs: what a job is, and where its record, input and result live in the object store.

Everything a job needs survives the loss of any process, because it is in the object store before
the job is acknowledged (the record and the input), and the result key is the job's own
(``results/jobs/<id>.<ext>``), so a retried job overwrites its result instead of adding a second.

Keys (all under the results bucket):

* ``jobs/records/<id>.json`` — the ``JobRecord``; ``jobs/active/<id>`` marks it not yet finished;
* ``jobs/inputs/<id>`` — the uploaded image;
* ``jobs/progress/<id>.json`` — tiles done and total, written by the model replica while it runs;
* ``jobs/idempotency/<owner>/<sha256 of the key>.json`` — the jobs an ``Idempotency-Key`` made;
* ``cache/<sha256>.json`` — the result of an earlier identical request (same input, options, model).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.storage import ObjectStore

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Operation = Literal["upscale", "face-enhance"]
# Record fields that stay inside the service: never in an API answer or a webhook.
PRIVATE_FIELDS = frozenset({"request_hash", "owner", "owner_key"})

RECORDS, ACTIVE, INPUTS, PROGRESS = (
    "jobs/records/",
    "jobs/active/",
    "jobs/inputs/",
    "jobs/progress/",
)
IDEMPOTENCY, CACHE, RESULTS = "jobs/idempotency/", "cache/", "results/jobs/"


def now() -> datetime:
    return datetime.now(UTC)


class Progress(BaseModel):
    done: int = 0
    total: int = 0


class JobError(BaseModel):
    code: str
    message: str


class JobRecord(BaseModel):
    """A job as stored; the API answers it with a freshly presigned result URL."""

    id: str
    operation: Operation
    options: dict[str, Any]
    owner: str
    owner_key: str | None = None  # the fingerprint of the API key that made it (None: keys off)
    input_sha256: str
    status: JobStatus = "queued"
    webhook_url: str | None = None
    batch_id: str | None = None
    request_hash: str
    created_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    cache_hit: bool = False
    result: dict[str, Any] | None = None  # StoredImage fields, without the URL
    error: JobError | None = None
    deliveries: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def new_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def request_hash(operation: str, options: dict[str, Any], input_sha256: str) -> str:
    """The identity of a request: the same input, operation and options (model included)."""
    canonical = json.dumps([operation, options, input_sha256], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobStore:
    """Job records, inputs, progress and the result cache in an ``ObjectStore`` (blocking)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def create(self, record: JobRecord, image: bytes) -> None:
        """The input first, then the record, then the active marker: a record never points to an
        input that is not there."""
        self._put(f"{INPUTS}{record.id}", image, "application/octet-stream")
        self.save(record)
        self._put(f"{ACTIVE}{record.id}", b"", "text/plain")

    def save(self, record: JobRecord) -> None:
        self._put(
            f"{RECORDS}{record.id}.json", record.model_dump_json().encode(), "application/json"
        )
        if record.finished:
            self.store.delete(f"{ACTIVE}{record.id}")

    def get(self, job_id: str) -> JobRecord | None:
        data = self.store.read(f"{RECORDS}{job_id}.json")
        return None if data is None else JobRecord.model_validate_json(data)

    def input(self, job_id: str) -> bytes | None:
        return self.store.read(f"{INPUTS}{job_id}")

    def active_ids(self) -> list[str]:
        return [key.removeprefix(ACTIVE) for key in self.store.keys(ACTIVE)]

    def all_ids(self) -> list[str]:
        return [key.removeprefix(RECORDS).removesuffix(".json") for key in self.store.keys(RECORDS)]

    def progress(self, job_id: str) -> Progress | None:
        data = self.store.read(f"{PROGRESS}{job_id}.json")
        return None if data is None else Progress.model_validate_json(data)

    def set_progress(self, job_id: str, progress: Progress) -> None:
        self._put(
            f"{PROGRESS}{job_id}.json", progress.model_dump_json().encode(), "application/json"
        )

    def idempotent(self, owner: str, key: str) -> tuple[list[str], str] | None:
        """(job ids, in order, and the request hash) an ``Idempotency-Key`` of ``owner`` made."""
        data = self.store.read(self._idempotency_key(owner, key))
        if data is None:
            return None
        found = json.loads(data)
        return [str(i) for i in found["jobs"]], str(found["request_hash"])

    def remember(self, owner: str, key: str, job_ids: list[str], request_hash: str) -> None:
        body = json.dumps({"jobs": job_ids, "request_hash": request_hash}).encode()
        self._put(self._idempotency_key(owner, key), body, "application/json")

    def cached(self, request: str) -> dict[str, Any] | None:
        data = self.store.read(f"{CACHE}{request}.json")
        return None if data is None else dict(json.loads(data))

    def cache(self, request: str, result: dict[str, Any]) -> None:
        self._put(
            f"{CACHE}{request}.json", json.dumps(result, default=str).encode(), "application/json"
        )

    def _idempotency_key(self, owner: str, key: str) -> str:
        return f"{IDEMPOTENCY}{owner}/{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        extension = key.rsplit(".", 1)[1] if "." in key.rsplit("/", 1)[1] else "bin"
        self.store.put(data, content_type=content_type, extension=extension, metadata={}, key=key)


def result_key(job_id: str, fmt: str) -> str:
    """Where a job's result goes: its own key, so a retry overwrites rather than duplicates."""
    return f"{RESULTS}{job_id}.{fmt}"


def progress_reporter(
    jobs: JobStore, job_id: str, *, every_s: float = 1.0
) -> Callable[[int, int], None]:
    """An ``on_progress(done, total)`` that writes the job's progress at most every ``every_s``
    (and at the end), without blocking the caller's event loop."""
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        moment = time.monotonic()
        if done < total and moment - last < every_s:
            return
        last = moment
        progress = Progress(done=done, total=total)
        asyncio.get_running_loop().run_in_executor(None, jobs.set_progress, job_id, progress)

    return report
