"""Reading an image upload: a multipart ``file`` (options may ride along as form fields) or the raw
image as the body, counted while it streams in so an oversized upload is refused unread; and the
OpenAPI description of that body, derived from the operation's options model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from models.formats import sniff_format
from serve_app.errors import ApiError, validation_message

Options = TypeVar("Options", bound=BaseModel)

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and form fields around the file
MAX_FORM_FIELDS = 20
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


def request_body(options: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring the upload: multipart (``file`` + the options as form fields)
    or the raw image bytes."""
    schema = options.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {**binary, "description": "The image."}, **schema["properties"]},
        "additionalProperties": False,
    }
    content: dict[str, Any] = {"multipart/form-data": {"schema": form}}
    content |= {kind: {"schema": binary} for kind in ("application/octet-stream", *IMAGE_TYPES)}
    return {"requestBody": {"required": True, "content": content}}


async def read_upload(
    request: Request, query: Options, max_bytes: int, timeout_s: float
) -> tuple[bytes, Options]:
    """The image bytes and the options: ``query`` (already validated) merged with form fields.

    Raises ApiError: 413 over ``max_bytes``, 408 when the body takes longer than ``timeout_s`` to
    arrive, 400 for malformed multipart or a missing ``file``, 422 for a bad or unknown form field
    or one also given in the query string, 400/415 when the bytes are empty or not an image.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(request, query, max_bytes)
    except TimeoutError:
        raise ApiError(
            408, "upload_timeout", f"the upload did not arrive within {timeout_s:g} s"
        ) from None


async def _read(request: Request, query: Options, max_bytes: int) -> tuple[bytes, Options]:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        data = b"".join([c async for c in limited(request, max_bytes)])
        return sniffed(data), query
    parser = MultiPartParser(
        request.headers,
        limited(request, max_bytes + MULTIPART_OVERHEAD),
        max_files=1,
        max_fields=MAX_FORM_FIELDS,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "malformed_multipart", f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "missing_file", "send the image as the multipart field 'file'")
        data = await upload.read()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"the upload is over the limit of {max_bytes} bytes")
    return sniffed(data), _merge(query, fields)


def _merge(query: Options, fields: dict[str, str]) -> Options:
    given = query.model_dump(exclude_unset=True)
    twice = sorted(set(given) & set(fields))
    if twice:
        raise ApiError(
            422, "validation_error", f"given as query and form field: {', '.join(twice)}"
        )
    try:
        return type(query).model_validate({**given, **fields})
    except ValidationError as exc:
        raise ApiError(422, "validation_error", validation_message(exc.errors())) from None


async def limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    too_large = ApiError(413, "too_large", f"the upload is over the limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        yield chunk


def sniffed(data: bytes) -> bytes:
    if not data:
        raise ApiError(400, "empty_input", "the request carried no image bytes")
    if sniff_format(data) is None:
        raise ApiError(415, "unsupported_media_type", "not an image: send PNG, JPEG or WebP")
    return data
