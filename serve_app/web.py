"""The web page at ``/``: pick images, choose a model, watch the jobs, compare before and after.

Plain files (``serve_app/web/``: HTML, one ES module, one stylesheet; nothing from the network),
read once at import and served as they are. The page is open (no API key): it only talks to the
``/v1`` API, with the key the user types in, like any other client.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from serve_app.errors import ApiError, error_response

_FILES = resources.files("serve_app") / "web"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
# Results are presigned object-store URLs on another origin: images may come from anywhere; the
# page's own code and requests stay on this origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data: http: https:; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    assets = {}
    for entry in _FILES.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            assets[entry.name] = (entry.read_bytes(), f"{_TYPES[suffix]}; charset=utf-8")
    return assets


ASSETS = _load()

router = APIRouter(include_in_schema=False)


def _asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        return error_response(ApiError(404, "not_found", f"no such file: {name}"))
    body, media_type = found
    return Response(body, media_type=media_type, headers=_HEADERS)


@router.get("/")
async def index() -> Response:
    return _asset("index.html")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return _asset(name)
