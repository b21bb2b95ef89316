"""The JobRunner deployment: runs accepted jobs to the end, whatever fails on the way.

One replica (jobs must not run twice at once). It holds no state that matters: every job is in the
object store (``models.jobs``) before it is acknowledged, and the runner finds unfinished jobs there
every few seconds — after its own restart, after a lost ``submit`` call, after a whole-application
restart. A job whose model replica (or node) dies is retried with backoff; its result key is its
own, so a retry never leaves two results.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from functools import partial
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve import metrics
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.config import CustomModel, build_registry
from models.errors import SuperResError
from models.jobs import PRIVATE_FIELDS, JobError, JobRecord, JobStore, now
from models.limits import Limits
from models.registry import variant_id
from models.results import StoredImage
from models.s3 import ResultStore
from models.settings import Settings
from models.storage import StorageUnavailableError
from models.urlguard import apost_json
from models.urlpolicy import UrlRefusedError
from models.webhook_delivery import deliver
from superres_client.options import FaceEnhanceOptions, UpscaleOptions
from superres_client.webhooks import EventType, WebhookSecret, event_msg_id

log = logging.getLogger("ray.serve")

RECOVER_EVERY_S = 5.0
MAX_ATTEMPTS = 6
BACKOFF_S, MAX_BACKOFF_S = 2.0, 30.0


def classify(exc: BaseException) -> tuple[bool, JobError]:
    """Whether a failure is worth retrying, and how the job record names it."""
    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    if isinstance(exc, SuperResError):
        return type(exc).transient, JobError(code=type(exc).code, message=str(exc))
    if isinstance(exc, ValidationError):
        return False, JobError(code="validation_error", message=str(exc))
    if isinstance(exc, StorageUnavailableError | BackPressureError | RayError):
        return True, JobError(code="unavailable", message=type(exc).__name__)
    log.error("job failed unexpectedly", exc_info=exc)
    return False, JobError(code="internal", message="internal error; it has been logged")


@serve.deployment(
    name="JobRunner",
    num_replicas=1,
    max_ongoing_requests=1000,
    max_queued_requests=1000,
    ray_actor_options={"num_cpus": 0},
)
class JobRunner:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        settings: Settings,
        upscaler: DeploymentHandle,
        faces: DeploymentHandle | None,
        custom_models: list[CustomModel],
        limits: Limits,
        max_concurrent: int = 8,
    ) -> None:
        self._jobs = JobStore(ResultStore(settings.storage()))
        self._upscaler, self._faces = upscaler, faces
        self._registry = build_registry(custom_models)
        self._limits = limits
        self._secrets = settings.webhook_signers()
        self._post = partial(apost_json, policy=settings.url_policy(limits.max_upload_bytes))
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._finished: Counter[str] = Counter()
        self._cache: Counter[str] = Counter()  # "hit" / "miss"
        self._queued = 0  # unfinished jobs seen in the store, last round
        self._jobs_total = metrics.Counter(
            "superres_jobs",
            description="Jobs finished, by operation and status.",
            tag_keys=("operation", "status"),  # type: ignore[arg-type]  # Ray types tuple[str]
        )
        self._queue_seconds = metrics.Histogram(
            "superres_job_queue_seconds",
            description="From a job's acceptance to its first attempt.",
            boundaries=[0.1, 0.5, 1, 5, 10, 30, 60, 300, 900],
        )
        self._depth = metrics.Gauge("superres_jobs_unfinished", description="Jobs not finished.")
        self._cache_lookups = metrics.Counter(
            "superres_cache_lookups",
            description="Result cache lookups, by outcome.",
            tag_keys=("outcome",),
        )
        self._recovery = asyncio.get_running_loop().create_task(self._recover_forever())

    async def submit(self, job_id: str) -> None:
        """Start a job now (it would be found within ``RECOVER_EVERY_S`` anyway)."""
        self._start(job_id)

    async def cancel(self, job_id: str) -> bool:
        """Stop a running or queued job; False if it is not running here."""
        task = self._running.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def stats(self) -> dict[str, Any]:
        lookups = sum(self._cache.values())
        return {
            "running": len(self._running),
            "unfinished": self._queued,
            "finished": dict(self._finished),
            "cache_hit_rate": round(self._cache["hit"] / lookups, 4) if lookups else None,
        }

    def _start(self, job_id: str) -> None:
        if job_id in self._running:
            return
        task = asyncio.get_running_loop().create_task(self._run(job_id))
        self._running[job_id] = task
        task.add_done_callback(lambda _: self._running.pop(job_id, None))

    async def _recover_forever(self) -> None:
        while True:
            try:
                active = await asyncio.to_thread(self._jobs.active_ids)
                self._queued = len(active)
                self._depth.set(len(active))
                for job_id in active:
                    self._start(job_id)
            except Exception as exc:  # storage down: try again next round
                log.warning("looking for unfinished jobs failed: %s", exc)
            await asyncio.sleep(RECOVER_EVERY_S)

    async def _run(self, job_id: str) -> None:
        record = await asyncio.to_thread(self._jobs.get, job_id)
        if record is None:
            return
        if record.finished:  # finished, but its active marker outlived a crash
            await asyncio.to_thread(self._jobs.save, record)
            return
        try:
            async with self._slots:
                await self._attempts(record)
        except asyncio.CancelledError:
            record.status, record.finished_at = "cancelled", now()
            await asyncio.shield(asyncio.to_thread(self._jobs.save, record))
            raise
        if record.webhook_url and self._secrets and record.status != "cancelled":
            secrets = list(self._secrets)
            if record.owner_key is not None:  # each API key's receivers have their own
                secrets = [s.for_key(record.owner_key) for s in secrets]
            record.deliveries.append(await self._notify(record, record.webhook_url, secrets))
        await asyncio.to_thread(self._jobs.save, record)
        self._finished[record.status] += 1
        self._jobs_total.inc(tags={"operation": record.operation, "status": record.status})

    async def _notify(
        self, record: JobRecord, url: str, secrets: list[WebhookSecret]
    ) -> dict[str, Any]:
        """The job's event, signed (Standard Webhooks; once per secret during a rotation) and
        retried; how it went, for the record."""
        event: EventType = "job.succeeded" if record.status == "succeeded" else "job.failed"
        data = record.model_dump(mode="json", exclude={*PRIVATE_FIELDS, "deliveries"})
        delivery = await deliver(
            url,
            event,
            data,
            secrets,
            self._post,
            msg_id=event_msg_id(record.id, event),
            give_up_on=(UrlRefusedError,),
        )
        return delivery.model_dump(mode="json")

    async def _attempts(self, record: JobRecord) -> None:
        cached = await asyncio.to_thread(self._jobs.cached, record.request_hash)
        outcome = "miss" if cached is None else "hit"
        self._cache[outcome] += 1
        self._cache_lookups.inc(tags={"outcome": outcome})
        if cached is not None:
            record.status, record.result, record.cache_hit = "succeeded", cached, True
            record.finished_at = now()
            return
        data = await asyncio.to_thread(self._jobs.input, record.id)
        if data is None:
            record.status, record.finished_at = "failed", now()
            record.error = JobError(code="input_missing", message="the job's input has expired")
            return
        self._queue_seconds.observe((now() - record.created_at).total_seconds())
        for attempt in range(MAX_ATTEMPTS):
            record.status, record.started_at = "running", record.started_at or now()
            record.attempts += 1
            await asyncio.to_thread(self._jobs.save, record)
            try:
                stored = await self._execute(record, data)
            except Exception as exc:
                transient, error = classify(exc)
                log.warning("job %s attempt %d: %s (%s)", record.id, attempt + 1, error.code, exc)
                record.error = error
                if not transient or attempt + 1 == MAX_ATTEMPTS:
                    record.status, record.finished_at = "failed", now()
                    return
                await asyncio.sleep(min(MAX_BACKOFF_S, BACKOFF_S * 2**attempt))
                continue
            result = _result(stored)
            record.status, record.result, record.error = "succeeded", result, None
            record.finished_at = now()
            await asyncio.to_thread(self._jobs.cache, record.request_hash, result)
            return

    async def _execute(self, record: JobRecord, data: bytes) -> StoredImage:
        if record.operation == "face-enhance":
            if self._faces is None:
                raise SuperResError("face enhancement is not enabled")
            face = FaceEnhanceOptions.model_validate(record.options)
            return await self._faces.enhance.remote(data, face, self._limits, record.id)
        options = UpscaleOptions.model_validate(record.options)
        model_id = variant_id(self._registry.get(str(options.model)), options.denoise)
        handle = self._upscaler.options(multiplexed_model_id=model_id)
        return await handle.upscale.remote(data, options, self._limits, record.id)


def _result(stored: StoredImage) -> dict[str, Any]:
    """What the job record keeps of a result: everything but the (expiring) URL."""
    fields = dict(vars(stored))
    fields.pop("url")
    fields.pop("expires_at")
    if stored.faces is not None:
        fields["faces"] = [face.model_dump() for face in stored.faces]
    return fields
