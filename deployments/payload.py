"""Image bytes across deployment handles: small ones by value, large ones by reference.

A handle call pickles its arguments into the call itself; a large upload would be copied through
every hop. Above ``INLINE_MAX_BYTES`` the caller puts the bytes into Ray's object store once and
sends a reference, which the model replica reads directly (locally, when it runs on the same node).
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

INLINE_MAX_BYTES = 2 << 20


@dataclass(frozen=True)
class ByReference:
    """Bytes in Ray's object store. Wrapped so that no layer resolves the reference on the way:
    only the replica that needs the bytes fetches them."""

    ref: ray.ObjectRef
    size: int


Payload = bytes | ByReference


def pack(data: bytes) -> Payload:
    return data if len(data) <= INLINE_MAX_BYTES else ByReference(ray.put(data), len(data))


async def unpack(payload: Payload) -> bytes:
    if isinstance(payload, ByReference):
        data: bytes = await payload.ref
        return data
    return payload
