"""``GET /v1/webhooks/secret``: the secret that signs the webhooks of the caller's jobs.

Each API key's webhooks are signed with a secret of its own, derived from the service's
(``WebhookSecret.for_key``), so its holder verifies deliveries without asking the operator and
cannot forge another key's. With API keys off there is no caller to derive for: the webhooks are
signed with the service's own secret, which is never handed out over HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from serve_app.deps import replica, require_key
from serve_app.errors import ApiError
from serve_app.keys import Principal
from serve_app.schemas import error_responses
from superres_client.webhooks import WebhookSecret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecretView(BaseModel):
    key: str = Field(description="The API key (its name) whose jobs' webhooks this secret signs.")
    secret: str = Field(description="whsec_…: verify those webhooks with it (Standard Webhooks).")
    previous: list[str] = Field(
        default_factory=list,
        description="During a rotation of the service's secret, the secrets that also still sign "
        "(each webhook carries one signature per secret): verify with `secret` from now on.",
    )


def secret_for(services: Sequence[WebhookSecret], caller: Principal) -> WebhookSecretView:
    """The caller's webhook secrets (``services``: the service's, the current one first);
    ``ApiError`` 404 when webhooks are off, 403 with keys off."""
    if not services:
        raise ApiError(404, "not_found", "webhooks are not configured on this service")
    if caller.key_id is None:
        raise ApiError(
            403,
            "forbidden",
            "this service runs without API keys: its webhooks are signed with the operator's "
            "SUPERRES_WEBHOOK_SECRET, which is not handed out",
        )
    current, *previous = (s.for_key(caller.key_id).reveal() for s in services)
    return WebhookSecretView(key=caller.name, secret=current, previous=previous)


@router.get("/secret", responses=error_responses(401, 403, 404))
async def webhook_secret(
    caller: Annotated[Principal, Depends(require_key)], response: Response
) -> WebhookSecretView:
    view = secret_for(replica().webhook_secrets, caller)
    response.headers["cache-control"] = "no-store"
    return view
