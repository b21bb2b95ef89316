"""Status calls that must answer within a second even when every model replica is busy.

``/readyz``, ``/v1/models`` and ``/v1/stats`` ask the model deployments through the same handles as
image work, so under full load they would queue behind it (or be refused by the bounded queue).
Each is asked with a short timeout; when the answer does not come in time, the last one stands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ray.serve.exceptions import BackPressureError

from serve_app.errors import ApiError

log = logging.getLogger("ray.serve")

STATUS_TIMEOUT_S = 0.5


class LastKnown:
    """The latest answer of each named status call; one per Ingress replica."""

    def __init__(self, timeout_s: float = STATUS_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._answers: dict[str, Any] = {}

    async def get(self, name: str, ask: Callable[[], Awaitable[Any]]) -> Any:
        """``ask()``'s answer, or the last one when it is late or refused for load; 503 when there
        has been none yet."""

        async def asked() -> Any:
            return await ask()

        try:
            answer = await asyncio.wait_for(asked(), self._timeout_s)
        except (TimeoutError, BackPressureError) as exc:
            if name not in self._answers:
                raise ApiError(503, "overloaded", f"{name} is busy; try again later", 1) from exc
            log.info("%s: busy (%s); answering the last known status", name, type(exc).__name__)
            return self._answers[name]
        self._answers[name] = answer
        return answer
