"""The synchronous client: ``Client(base_url, api_key).upscale("photo.jpg", scale=2)``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from superres_client import _common as c
from superres_client.errors import JobCancelled, JobFailed, SuperresError, Timeout, from_response
from superres_client.results import JobView, Result

ProgressCallback = Callable[[int, int], None]


class Job:
    """A job on the service (``POST /v1/jobs``), as last read in ``view``."""

    def __init__(self, client: Client, view: JobView) -> None:
        self._client = client
        self.view = view

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.view.status!r})"

    @property
    def id(self) -> str:
        return self.view.id

    @property
    def result(self) -> Result | None:
        """The result once the job succeeded (as last read)."""
        return self.view.result

    def refresh(self) -> JobView:
        self.view = JobView.model_validate(self._client._json("GET", f"/v1/jobs/{self.id}"))
        return self.view

    def status(self) -> str:
        """queued, running, succeeded, failed or cancelled (read now)."""
        return self.refresh().status

    def cancel(self) -> JobView:
        """Cancel the job (``Conflict`` if it already finished)."""
        self.view = JobView.model_validate(self._client._json("DELETE", f"/v1/jobs/{self.id}"))
        return self.view

    def wait(
        self,
        progress: ProgressCallback | None = None,
        timeout: float | None = 600.0,
        poll_interval: float = 0.2,
    ) -> Result:
        """Poll until the job finishes; ``progress(done, total)`` gets its tiles as they change
        (and ``(total, total)`` once it succeeded). ``JobFailed`` / ``JobCancelled`` carry the job,
        ``Timeout`` after ``timeout`` seconds."""
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
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)
            view = self.refresh()


class _Reporter:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.last: tuple[int, int] | None = None

    def update(self, view: JobView) -> None:
        if self.callback is None or view.progress is None or view.progress.total <= 0:
            return
        now = (view.progress.done, view.progress.total)
        if now != self.last:
            self.last = now
            self.callback(*now)

    def finish(self) -> None:
        total = self.last[1] if self.last else 1
        if self.callback is not None and self.last != (total, total):
            self.last = (total, total)
            self.callback(total, total)


def _finished(view: JobView, reporter: _Reporter) -> Result:
    if view.status == "succeeded" and view.result is not None:
        reporter.finish()
        return view.result
    raise (JobCancelled if view.status == "cancelled" else JobFailed)(view)


class Client:
    """A client of one superres service. ``base_url`` defaults to ``SUPERRES_URL``, ``api_key``
    to ``SUPERRES_API_KEY``; 429 and 503 are retried (``retry.attempts`` in all) after their
    ``Retry-After``, and so are a refused connection and a GET whose connection was lost."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retry: c.Retry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = c.base_url(base_url)
        self.retry = retry or c.Retry()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=c.headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                again = c.repeatable(method, kwargs.get("headers"))
                delay = self.retry.delay_after(attempt, exc, again)
                if delay is None:
                    raise c.transport_error(exc) from exc
                time.sleep(delay)
                attempt += 1
                continue
            if not response.is_error:
                return response
            delay = self.retry.delay(attempt, response)
            if delay is None:
                raise from_response(response)
            time.sleep(delay)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise SuperresError("the service answered no JSON", code="bad_response") from None

    def _run(self, operation: str, image: c.ImageInput, options: dict[str, Any]) -> Result:
        checked = c.checked_options(operation, options)
        if c.is_url(image):  # the service fetches it: through a job
            return self._submit(image, operation, checked, None).wait()
        name, data = c.read_image(image)
        body = self._json(
            "POST",
            c.route(operation),
            params=c.as_query(checked),
            files={"file": (name, data)},
        )
        return Result.model_validate(body)

    def upscale(self, image: c.ImageInput, **options: Any) -> Result:
        """Upscale a file path, an http(s) URL or image bytes (``model``, ``scale``, ``format``,
        ``quality``, ``denoise``, ``face_enhance``: ``superres_client.options.UpscaleOptions``)."""
        return self._run("upscale", image, options)

    def face_enhance(self, image: c.ImageInput, **options: Any) -> Result:
        """Restore faces (``superres_client.options.FaceEnhanceOptions``); the result has ``faces``."""
        return self._run("face-enhance", image, options)

    def submit(
        self,
        image: c.ImageInput,
        operation: c.Operation = "upscale",
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """Create a job (``POST /v1/jobs``) and return it at once. ``idempotency_key`` (random
        if None) makes a repeat of this call return the same job, also after a lost connection."""
        checked = c.checked_options(operation, options)
        return self._submit(image, operation, checked, webhook_url, idempotency_key)

    def _submit(
        self,
        image: c.ImageInput,
        operation: str,
        options: dict[str, Any],
        webhook: str | None,
        key: str | None = None,
    ) -> Job:
        body = self._json(
            "POST", "/v1/jobs", **c.job_request(image, operation, options, webhook, key)
        )
        return Job(self, JobView.model_validate(body))

    def job(self, job_id: str) -> Job:
        """An existing job, read now."""
        return Job(self, JobView.model_validate(self._json("GET", f"/v1/jobs/{job_id}")))

    def jobs(self, status: str = "active", limit: int = 100) -> list[Job]:
        """Jobs by status (``active``, ``all``, ``queued``, ...), all pages."""
        found: list[Job] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"status": status, "limit": limit}
            if after:
                params["after"] = after
            page = self._json("GET", "/v1/jobs", params=params)
            found += [Job(self, JobView.model_validate(j)) for j in page["jobs"]]
            after = page.get("next")
            if not after or len(page["jobs"]) < limit:
                return found

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: each model, ready or not, and why."""
        return list(self._json("GET", "/v1/models"))

    def stats(self) -> dict[str, Any]:
        """``GET /v1/stats``."""
        return dict(self._json("GET", "/v1/stats"))

    def webhook_secret(self) -> str:
        """``GET /v1/webhooks/secret``: ``whsec_…``, which signs the webhooks of this API key's
        jobs; verify them with it (``docs/webhooks.md``)."""
        return str(self._json("GET", "/v1/webhooks/secret")["secret"])
