"""The jobs of one Ingress replica: create (input and record stored before the 202), view with a
fresh result URL, list, cancel. Blocking store calls run in threads."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from ray.serve.handle import DeploymentHandle

from models.jobs import PRIVATE_FIELDS, TERMINAL, JobRecord, JobStore, new_id, now, request_hash
from models.limits import Limits
from models.storage import ObjectStore
from models.urlguard import afetch
from models.urlpolicy import UrlPolicy, check_url
from serve_app.errors import ApiError, validation_message
from serve_app.keys import Principal
from superres_client.options import FaceEnhanceOptions, UpscaleOptions

log = logging.getLogger("ray.serve")

OPTIONS: dict[str, type[UpscaleOptions] | type[FaceEnhanceOptions]] = {
    "upscale": UpscaleOptions,
    "face-enhance": FaceEnhanceOptions,
}
ACTIVE = ("queued", "running")


class Jobs:
    """The jobs API of one Ingress replica: create, view, list, cancel (blocking store calls run
    in threads)."""

    def __init__(
        self,
        store: ObjectStore,
        runner: DeploymentHandle,
        limits: Limits,
        default_model: str,
        policy: UrlPolicy,
        webhooks: bool = False,
    ) -> None:
        self.store = store
        self.jobs = JobStore(store)
        self.runner = runner
        self.limits = limits
        self.default_model = default_model
        self.policy = policy  # the guarded client's, for image_url and webhook_url
        self.webhooks = webhooks  # a signing secret is configured

    def options(self, operation: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The operation's options validated and with the default model named (so a cached result
        is found only for the same model)."""
        try:
            options = OPTIONS[operation].model_validate(raw)
        except ValidationError as exc:
            raise ApiError(422, "validation_error", validation_message(exc.errors())) from None
        if isinstance(options, UpscaleOptions) and options.face_enhance:
            options = options.face_options()
            operation = "face-enhance"
        field = "background_model" if isinstance(options, FaceEnhanceOptions) else "model"
        if getattr(options, field) is None:
            options = options.model_copy(update={field: self.default_model})
        return {"operation": operation, **options.model_dump(mode="json")}

    async def create(
        self,
        caller: Principal,
        operation: str,
        options: dict[str, Any],
        images: list[bytes],
        webhook_url: str | None,
        idempotency_key: str | None,
    ) -> list[JobRecord]:
        chosen = self.options(operation, options)
        if webhook_url:
            await self.check_webhook(webhook_url)
        operation = chosen.pop("operation")
        digests = [hashlib.sha256(image).hexdigest() for image in images]
        body_hash = request_hash(operation, {**chosen, "webhook": webhook_url}, ",".join(digests))
        if idempotency_key:
            known = await asyncio.to_thread(self.jobs.idempotent, caller.name, idempotency_key)
            if known is not None:
                return await self._replay(caller, known, body_hash)
        batch = f"batch_{uuid.uuid4().hex}" if len(images) > 1 else None
        records = []
        for image, digest in zip(images, digests, strict=True):
            record = JobRecord(
                id=new_id(),
                operation=operation,  # type: ignore[arg-type]
                options=chosen,
                owner=caller.name,
                owner_key=caller.key_id,
                input_sha256=digest,
                webhook_url=webhook_url,
                batch_id=batch,
                request_hash=request_hash(operation, chosen, digest),
            )
            await asyncio.to_thread(self.jobs.create, record, image)
            records.append(record)
        if idempotency_key:
            ids = [r.id for r in records]
            await asyncio.to_thread(
                self.jobs.remember, caller.name, idempotency_key, ids, body_hash
            )
        for record in records:  # the runner would find them anyway: this only starts them sooner
            try:
                await self.runner.submit.remote(record.id)
            except Exception as exc:
                log.warning("submitting %s failed (the runner will find it): %s", record.id, exc)
        return records

    async def _replay(
        self, caller: Principal, known: tuple[list[str], str], body_hash: str
    ) -> list[JobRecord]:
        job_ids, known_hash = known
        if known_hash != body_hash:
            raise ApiError(
                409, "idempotency_conflict", "this Idempotency-Key was used for another request"
            )
        return [await self.get(caller, job_id) for job_id in job_ids]

    async def accept(self, caller: Principal, options: BaseModel, image: bytes) -> dict[str, Any]:
        """A sync route's request as a job (``Prefer: respond-async``); the job's view."""
        operation = "face-enhance" if isinstance(options, FaceEnhanceOptions) else "upscale"
        raw = options.model_dump(exclude_unset=True)
        (record,) = await self.create(caller, operation, raw, [image], None, None)
        return await self.view(record)

    async def check_webhook(self, url: str) -> None:
        """Refused now rather than when the job is done."""
        if not self.webhooks:
            raise ApiError(400, "invalid_option", "webhooks are not configured on this service")
        await asyncio.to_thread(check_url, url, self.policy)

    async def fetch(self, url: str) -> bytes:
        """An ``image_url``'s bytes through the guarded client (public addresses only)."""
        return await afetch(url, self.policy)

    async def get(self, caller: Principal, job_id: str) -> JobRecord:
        record = await asyncio.to_thread(self.jobs.get, job_id)
        if record is None or (not caller.anonymous and record.owner != caller.name):
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return record

    async def view(self, record: JobRecord) -> dict[str, Any]:
        body = record.model_dump(mode="json", exclude=set(PRIVATE_FIELDS))
        body["status_url"] = f"/v1/jobs/{record.id}"
        if record.status == "running":
            progress = await asyncio.to_thread(self.jobs.progress, record.id)
            body["progress"] = None if progress is None else progress.model_dump()
        if record.result is not None:
            url, expires_at = self.store.presign(record.result["key"])
            body["result"] = {**record.result, "url": url, "expires_at": expires_at.isoformat()}
        return body

    async def cancel(self, caller: Principal, job_id: str) -> JobRecord:
        record = await self.get(caller, job_id)
        if record.status in TERMINAL:
            raise ApiError(409, "job_finished", f"job {job_id!r} is already {record.status}")
        if not await self.runner.cancel.remote(job_id):
            record.status, record.finished_at = "cancelled", now()
            await asyncio.to_thread(self.jobs.save, record)
        for _ in range(50):  # the runner writes the cancelled record as its task ends
            record = await self.get(caller, job_id)
            if record.status in TERMINAL:
                break
            await asyncio.sleep(0.1)
        return record

    async def list(
        self, caller: Principal, status: str, limit: int, after: str | None
    ) -> tuple[list[JobRecord], str | None]:
        ids = await asyncio.to_thread(
            self.jobs.active_ids if status == "active" else self.jobs.all_ids
        )
        wanted = ACTIVE if status == "active" else (status,)
        found: list[JobRecord] = []
        for job_id in sorted(i for i in ids if after is None or i > after):
            record = await asyncio.to_thread(self.jobs.get, job_id)
            if record is None or (not caller.anonymous and record.owner != caller.name):
                continue
            if status == "all" or record.status in wanted:
                found.append(record)
                if len(found) == limit:
                    return found, job_id
        return found, None
