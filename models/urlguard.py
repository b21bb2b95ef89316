"""One guarded HTTP client for URLs that clients give us (``image_url``, ``webhook_url``): only
to what ``models.urlpolicy`` allows (public addresses after DNS, or the allowlist).

DNS pinning: a host is resolved once, by ``urlpolicy.check``, and the connection goes to the address
that was checked, never to a second resolution (which an attacker's DNS could answer with
``127.0.0.1``: DNS rebinding). Each request is sent to ``scheme://<checked ip>:port/path``
with the original ``Host`` header and, for https, the original name as SNI (httpcore's
``sni_hostname`` extension), so virtual hosts work and the certificate is verified against the
name. Requests go straight to an ``httpx`` transport, not a ``Client``: no proxies from the
environment (a proxy would resolve the name itself), no cookie jar, no automatic redirects, no
pooled connection reused between hops (a connection made for one name must not serve another).

Redirects (GET only) are followed here, each hop checked like the first, at most
``max_redirects``. Bodies are streamed and refused past ``max_bytes`` (at once when
Content-Length says so). ``total_timeout_s`` bounds a whole call (the sync client checks it
between reads, so it may overrun by up to one ``read_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from models.errors import ImageTooLargeError, SuperResError
from models.urlpolicy import CheckedUrl, IpAddress, Resolver, UrlPolicy, check

# httpx logs each request's full URL at INFO; a user's URL can carry a token: keep it out of logs.
logging.getLogger("httpx").setLevel(logging.WARNING)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "superres-fetch/0.1"


class UrlFetchError(SuperResError):
    """The URL was allowed but the remote end failed: no connection, a timeout, an error status
    (``status``), too many redirects."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UrlTooLargeError(UrlFetchError, ImageTooLargeError):
    """The response body is over ``max_bytes`` (declared or counted while streaming)."""

    def __init__(self, message: str, *, limit: int) -> None:
        ImageTooLargeError.__init__(self, message, limit=limit)
        self.status = None


def fetch(url: str, policy: UrlPolicy, *, resolve: Resolver = socket.getaddrinfo) -> bytes:
    """The body of ``url`` (GET, redirects re-checked), at most ``policy.max_bytes``."""
    deadline = time.monotonic() + policy.total_timeout_s
    with _transport(policy) as transport:
        for _ in range(policy.max_redirects + 1):
            target = check(url, policy, resolve)
            with _translated(target):
                response = _send(transport, target, "GET", policy, deadline)
                try:
                    location = _redirect(response, target, policy)
                    if location is None:
                        body = bytearray()
                        for chunk in response.iter_bytes():  # as they arrive, not 64 KiB at a time
                            _append(body, chunk, policy)
                            _before(deadline)
                        return bytes(body)
                finally:
                    response.close()
            url = location
    raise UrlFetchError(f"more than {policy.max_redirects} redirects")


async def afetch(url: str, policy: UrlPolicy, *, resolve: Resolver = socket.getaddrinfo) -> bytes:
    """``fetch`` for the event loop (name resolution runs in a thread)."""
    try:
        async with asyncio.timeout(policy.total_timeout_s):
            return await _afetch(url, policy, resolve, time.monotonic() + policy.total_timeout_s)
    except TimeoutError:
        raise UrlFetchError(
            f"no answer within the total timeout ({policy.total_timeout_s} s)"
        ) from None


async def _afetch(url: str, policy: UrlPolicy, resolve: Resolver, deadline: float) -> bytes:
    async with _async_transport(policy) as transport:
        for _ in range(policy.max_redirects + 1):
            target = await asyncio.to_thread(check, url, policy, resolve)
            with _translated(target):
                response = await _asend(transport, target, "GET", policy, deadline)
                try:
                    location = _redirect(response, target, policy)
                    if location is None:
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            _append(body, chunk, policy)
                        return bytes(body)
                finally:
                    await response.aclose()
            url = location
    raise UrlFetchError(f"more than {policy.max_redirects} redirects")


# --- post (webhooks) ------------------------------------------------------------------------


def post_json(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: UrlPolicy,
    *,
    resolve: Resolver = socket.getaddrinfo,
) -> int:
    """POST ``body`` to ``url``; the response status (redirects are not followed)."""
    deadline = time.monotonic() + policy.total_timeout_s
    target = check(url, policy, resolve)
    with _transport(policy) as transport, _translated(target):
        response = _send(transport, target, "POST", policy, deadline, body, headers)
        response.close()
        return response.status_code


async def apost_json(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: UrlPolicy,
    *,
    resolve: Resolver = socket.getaddrinfo,
) -> int:
    """``post_json`` for the event loop."""
    deadline = time.monotonic() + policy.total_timeout_s
    try:
        async with asyncio.timeout(policy.total_timeout_s):
            target = await asyncio.to_thread(check, url, policy, resolve)
            async with _async_transport(policy) as transport:
                with _translated(target):
                    response = await _asend(
                        transport, target, "POST", policy, deadline, body, headers
                    )
                    await response.aclose()
                    return response.status_code
    except TimeoutError:
        raise UrlFetchError(
            f"no answer within the total timeout ({policy.total_timeout_s} s)"
        ) from None


# --- helpers --------------------------------------------------------------------------------


def _request(
    target: CheckedUrl,
    address: IpAddress,
    method: str,
    policy: UrlPolicy,
    deadline: float,
    body: bytes | None,
    headers: Mapping[str, str] | None,
) -> httpx.Request:
    left = _before(deadline)
    connect, read = min(policy.connect_timeout_s, left), min(policy.read_timeout_s, left)
    timeout = {"connect": connect, "read": read, "write": read, "pool": connect}
    extensions: dict[str, Any] = {"timeout": timeout}
    if target.host != str(address):  # a name: verify the certificate against it, not the IP
        extensions["sni_hostname"] = target.host
    all_headers = httpx.Headers({"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    all_headers.update(headers or {})
    all_headers["Host"] = target.url.netloc.decode("ascii")
    if body is not None and "Content-Type" not in all_headers:
        all_headers["Content-Type"] = "application/json"
    pinned = target.url.copy_with(host=str(address))
    return httpx.Request(method, pinned, headers=all_headers, content=body, extensions=extensions)


def _send(
    transport: httpx.HTTPTransport,
    target: CheckedUrl,
    method: str,
    policy: UrlPolicy,
    deadline: float,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    for i, address in enumerate(target.addresses):  # the next checked address if one refuses
        request = _request(target, address, method, policy, deadline, body, headers)
        try:
            response = transport.handle_request(request)
        except httpx.ConnectError:
            if i == len(target.addresses) - 1:
                raise
            continue
        response.request = request
        return response
    raise AssertionError("unreachable: check returns at least one address")


async def _asend(
    transport: httpx.AsyncHTTPTransport,
    target: CheckedUrl,
    method: str,
    policy: UrlPolicy,
    deadline: float,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    for i, address in enumerate(target.addresses):
        request = _request(target, address, method, policy, deadline, body, headers)
        try:
            response = await transport.handle_async_request(request)
        except httpx.ConnectError:
            if i == len(target.addresses) - 1:
                raise
            continue
        response.request = request
        return response
    raise AssertionError("unreachable: check returns at least one address")


def _redirect(response: httpx.Response, target: CheckedUrl, policy: UrlPolicy) -> str | None:
    """The next URL to GET, None for a body to read, or an error for any other status."""
    location = response.headers.get("Location")
    if response.status_code in _REDIRECTS and location:
        try:
            return str(target.url.join(location))
        except httpx.InvalidURL:
            raise UrlFetchError(f"{target.host} redirected to an invalid URL") from None
    if not 200 <= response.status_code < 300:
        raise UrlFetchError(
            f"{target.host} answered HTTP {response.status_code}", status=response.status_code
        )
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise UrlTooLargeError(
            f"the response is {declared} bytes, over the limit of {policy.max_bytes}",
            limit=policy.max_bytes,
        )
    return None


def _append(body: bytearray, chunk: bytes, policy: UrlPolicy) -> None:
    body += chunk
    if len(body) > policy.max_bytes:
        raise UrlTooLargeError(
            f"the response is over the limit of {policy.max_bytes} bytes", limit=policy.max_bytes
        )


def _before(deadline: float) -> float:
    """Seconds left before ``deadline``; an error when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise UrlFetchError("no answer within the total timeout")
    return left


@contextlib.contextmanager
def _translated(target: CheckedUrl) -> Iterator[None]:
    """httpx's transport errors → UrlFetchError, naming the host but no address."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise UrlFetchError(f"{target.host} did not answer in time ({type(e).__name__})") from e
    except httpx.HTTPError as e:
        raise UrlFetchError(f"could not fetch from {target.host} ({type(e).__name__})") from e


@functools.cache
def _default_ssl() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def _transport_args(policy: UrlPolicy) -> dict[str, Any]:
    return {
        "verify": policy.ssl_context or _default_ssl(),
        "trust_env": False,
        "limits": httpx.Limits(max_keepalive_connections=0),
    }


def _transport(policy: UrlPolicy) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(**_transport_args(policy))


def _async_transport(policy: UrlPolicy) -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(**_transport_args(policy))
