"""What every route may depend on: the Ingress replica serving it, and the caller's API key."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.auth import KeyRing, key_dependency


def replica() -> Any:
    """The Ingress instance serving this request (routes outside its class reach it here)."""
    return serve.get_replica_context().servable_object


def _key_ring() -> KeyRing | None:
    """The ring of the Ingress replica serving the request (made in its constructor)."""
    return getattr(replica(), "key_ring", None)


require_key = key_dependency(_key_ring)
