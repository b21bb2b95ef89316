"""The asyncio client: ``async with AsyncClient() as sr: await sr.upscale(...)``; the same API as
``Client`` with awaitable methods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from superres_client import _common as c
from superres_client.client import _finished, _Reporter
from superres_client.errors import SuperresError, Timeout, from_response
from superres_client.results import JobView, Result


class AsyncJob:
    """A job on the service, as last read in ``view``."""

    def __init__(self, client: AsyncClient, view: JobView) -> None:
        self._client = client
        self.view = view

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r}, status={self.view.status!r})"

    @property
    def id(self) -> str:
        return self.view.id

    @property
    def result(self) -> Result | None:
        return self.view.result

    async def refresh(self) -> JobView:
        body = await self._client._json("GET", f"/v1/jobs/{self.id}")
        self.view = JobView.model_validate(body)
        return self.view

    async def status(self) -> str:
        return (await self.refresh()).status

    async def cancel(self) -> JobView:
        body = await self._client._json("DELETE", f"/v1/jobs/{self.id}")
        self.view = JobView.model_validate(body)
        return self.view

    async def wait(
        self,
        progress: Callable[[int, int], None] | None = None,
        timeout: float | None = 600.0,
        poll_interval: float = 0.2,
    ) -> Result:
        """As ``Job.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        reporter = _Reporter(progress)
        view, interval = self.view, poll_interval
        while True:
            reporter.update(view)
            if view.finished:
                return _finished(view, reporter)
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"job {self.id} still {view.status} after {timeout} s", code="timeout"
                )
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 2.0)
            view = await self.refresh()


class AsyncClient:
    """As ``Client``, for asyncio."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retry: c.Retry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = c.base_url(base_url)
        self.retry = retry or c.Retry()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=c.headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                again = c.repeatable(method, kwargs.get("headers"))
                delay = self.retry.delay_after(attempt, exc, again)
                if delay is None:
                    raise c.transport_error(exc) from exc
                await asyncio.sleep(delay)
                attempt += 1
                continue
            if not response.is_error:
                return response
            delay = self.retry.delay(attempt, response)
            if delay is None:
                raise from_response(response)
            await asyncio.sleep(delay)
            attempt += 1

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise SuperresError("the service answered no JSON", code="bad_response") from None

    async def _run(self, operation: str, image: c.ImageInput, options: dict[str, Any]) -> Result:
        checked = c.checked_options(operation, options)
        if c.is_url(image):
            job = await self._submit(image, operation, checked, None)
            return await job.wait()
        name, data = c.read_image(image)
        body = await self._json(
            "POST", c.route(operation), params=c.as_query(checked), files={"file": (name, data)}
        )
        return Result.model_validate(body)

    async def upscale(self, image: c.ImageInput, **options: Any) -> Result:
        return await self._run("upscale", image, options)

    async def face_enhance(self, image: c.ImageInput, **options: Any) -> Result:
        return await self._run("face-enhance", image, options)

    async def submit(
        self,
        image: c.ImageInput,
        operation: c.Operation = "upscale",
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> AsyncJob:
        checked = c.checked_options(operation, options)
        return await self._submit(image, operation, checked, webhook_url, idempotency_key)

    async def _submit(
        self,
        image: c.ImageInput,
        operation: str,
        options: dict[str, Any],
        webhook: str | None,
        key: str | None = None,
    ) -> AsyncJob:
        request = c.job_request(image, operation, options, webhook, key)
        body = await self._json("POST", "/v1/jobs", **request)
        return AsyncJob(self, JobView.model_validate(body))

    async def job(self, job_id: str) -> AsyncJob:
        body = await self._json("GET", f"/v1/jobs/{job_id}")
        return AsyncJob(self, JobView.model_validate(body))

    async def models(self) -> list[dict[str, Any]]:
        return list(await self._json("GET", "/v1/models"))

    async def stats(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/stats"))

    async def webhook_secret(self) -> str:
        return str((await self._json("GET", "/v1/webhooks/secret"))["secret"])
