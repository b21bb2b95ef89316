"""The async API: ``/v1/jobs``. A job is accepted (202) only once its input and record are in the
object store; the JobRunner deployment runs it from there (see ``models.jobs``, ``deployments.jobs``).

``POST /v1/jobs`` takes multipart (one or more ``file`` parts, or ``image_url`` fields; ``operation``;
``options`` as a JSON object; ``webhook_url``) or a JSON body with ``image_url`` / ``image_urls``.
Several images make a batch: one job each and a ``batch_id``. An ``Idempotency-Key`` header makes
a retried POST return the same job(s); the same key with another body is a 409.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from models.limits import Limits
from serve_app.deps import replica, require_key
from serve_app.errors import ApiError, validation_message
from serve_app.jobs import OPTIONS, Jobs
from serve_app.keys import Principal
from serve_app.schemas import error_responses
from serve_app.upload import MULTIPART_OVERHEAD, limited, sniffed

MAX_BATCH = 16

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobRequest(BaseModel):
    """A job as a JSON body (images by URL)."""

    model_config = ConfigDict(extra="forbid")

    operation: Literal["upscale", "face-enhance"] = "upscale"
    options: dict[str, Any] = Field(default_factory=dict)
    image_url: str | None = None
    image_urls: list[str] = Field(default_factory=list, max_length=MAX_BATCH)
    webhook_url: str | None = None


_BINARY = {"type": "string", "format": "binary"}
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": _BINARY, "maxItems": MAX_BATCH},
                        "image_url": {"type": "array", "items": {"type": "string"}},
                        "operation": {"type": "string", "enum": ["upscale", "face-enhance"]},
                        "options": {
                            "type": "string",
                            "description": "The operation's options as a JSON object.",
                        },
                        "webhook_url": {"type": "string"},
                    },
                    "additionalProperties": False,
                }
            },
            "application/json": {"schema": JobRequest.model_json_schema()},
        },
    }
}


def _jobs() -> Jobs:
    jobs: Jobs | None = getattr(replica(), "jobs", None)
    if jobs is None:
        raise ApiError(503, "jobs_disabled", "jobs are not enabled on this service", 5)
    return jobs


async def _form(request: Request, limits: Limits) -> tuple[dict[str, Any], list[bytes], list[str]]:
    """Multipart fields, the uploaded files and the image URLs of a POST."""
    parser = MultiPartParser(
        request.headers,
        limited(request, MAX_BATCH * limits.max_upload_bytes + MULTIPART_OVERHEAD),
        max_files=MAX_BATCH,
        max_fields=MAX_BATCH + 8,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "malformed_multipart", f"malformed multipart body: {exc}") from None
    try:
        files: list[bytes] = []
        urls: list[str] = []
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if len(data) > limits.max_upload_bytes:
                    raise ApiError(413, "too_large", "an upload is over the limit")
                files.append(sniffed(data))
            elif name == "image_url":
                urls.append(value)
            else:
                fields[name] = value
    finally:
        await form.close()
    if "options" in fields:
        try:
            fields["options"] = json.loads(fields["options"])
        except ValueError:
            fields["options"] = None
        if not isinstance(fields["options"], dict):  # "null", "[]", "3" are not options
            raise ApiError(422, "validation_error", "options: not a JSON object")
    return fields, files, urls


@router.post(
    "",
    status_code=202,
    responses=error_responses(400, 401, 409, 413, 415, 422, 503),
    openapi_extra=CREATE_BODY,
)
async def create_jobs(
    request: Request, caller: Annotated[Principal, Depends(require_key)]
) -> dict[str, Any]:
    """Create one job per image (multipart ``file`` parts or ``image_url`` values)."""
    jobs = _jobs()
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(("application/json", "multipart/form-data")):
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data or application/json"
        )
    if ctype.startswith("application/json"):
        raw = b"".join([c async for c in limited(request, 64 * 1024)])
        try:
            body = JobRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise ApiError(422, "validation_error", validation_message(exc.errors())) from None
        fields: dict[str, Any] = {
            "operation": body.operation,
            "options": body.options,
            "webhook_url": body.webhook_url,
        }
        files: list[bytes] = []
        urls = [u for u in [body.image_url, *body.image_urls] if u]
    else:
        fields, files, urls = await _form(request, jobs.limits)
    unknown = set(fields) - {"operation", "options", "webhook_url"}
    if unknown:
        raise ApiError(422, "validation_error", f"unknown fields: {', '.join(sorted(unknown))}")
    if fields.get("webhook_url"):
        await jobs.check_webhook(str(fields["webhook_url"]))
    files += [sniffed(await jobs.fetch(url)) for url in urls]
    if not files or len(files) > MAX_BATCH:
        raise ApiError(
            400, "missing_file", f"send 1 to {MAX_BATCH} images as 'file' or 'image_url'"
        )
    operation = str(fields.get("operation") or "upscale")
    if operation not in OPTIONS:
        raise ApiError(422, "validation_error", f"operation: use one of {', '.join(OPTIONS)}")
    records = await jobs.create(
        caller,
        operation,
        dict(fields.get("options") or {}),
        files,
        fields.get("webhook_url"),
        request.headers.get("idempotency-key"),
    )
    views = [await jobs.view(r) for r in records]
    return views[0] if len(views) == 1 else {"batch_id": records[0].batch_id, "jobs": views}


@router.get("/{job_id}", responses=error_responses(401, 404, 503))
async def get_job(
    job_id: str, caller: Annotated[Principal, Depends(require_key)]
) -> dict[str, Any]:
    jobs = _jobs()
    return await jobs.view(await jobs.get(caller, job_id))


@router.delete("/{job_id}", responses=error_responses(401, 404, 409, 503))
async def cancel_job(
    job_id: str, caller: Annotated[Principal, Depends(require_key)]
) -> dict[str, Any]:
    jobs = _jobs()
    return await jobs.view(await jobs.cancel(caller, job_id))


@router.get("", responses=error_responses(401, 422, 503))
async def list_jobs(
    caller: Annotated[Principal, Depends(require_key)],
    status: Annotated[
        Literal["active", "all", "queued", "running", "succeeded", "failed", "cancelled"], Query()
    ] = "active",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    jobs = _jobs()
    found, last = await jobs.list(caller, status, limit, after)
    return {"jobs": [await jobs.view(r) for r in found], "next": last}
