"""One guarded HTTP client for URLs that clients give us (``image_url``, ``webhook_url``).

A URL is fetched only if it is http(s), carries no credentials, and *every* address its host
resolves to is public: no private, loopback, link-local (cloud metadata at 169.254.169.254),
CGNAT, multicast, reserved or unspecified address, nor an IPv4-mapped or 6to4 IPv6 form of one.
``UrlPolicy.allowlist`` opens chosen hosts or CIDRs on purpose (``127.0.0.1/32`` in tests).

DNS pinning: a host is resolved once, by ``check_url``, and the connection goes to the address
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
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from models.errors import ImageTooLargeError, InvalidOptionError, SuperResError

# httpx logs each request's full URL at INFO; a user's URL can carry a token: keep it out of logs.
logging.getLogger("httpx").setLevel(logging.WARNING)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Iterable[tuple[Any, ...]]]  # socket.getaddrinfo(host, port)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_USER_AGENT = "superres-fetch/0.1"


class UrlRefusedError(InvalidOptionError):
    """The URL may not be fetched: not http(s), has credentials, its host does not resolve, or
    resolves to an address that is not public (and not allow-listed). Nothing was sent."""


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


@dataclass(frozen=True)
class UrlPolicy:
    """What may be fetched and how long it may take. ``allowlist``: exact host names (all their
    addresses allowed) and addresses or CIDRs (those addresses allowed), though not public."""

    allowlist: tuple[str, ...] = ()
    max_bytes: int = 50_000_000
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    max_redirects: int = 3
    # Trust these CAs instead of certifi's (a private CA; tests).
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)
    _networks: tuple[IpNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_bytes", "connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if not getattr(self, name) > 0:
                raise InvalidOptionError(
                    f"{name} must be greater than 0, got {getattr(self, name)}"
                )
        if self.max_redirects < 0:
            raise InvalidOptionError(f"max_redirects must be 0 or more, got {self.max_redirects}")
        parsed = [_allow_entry(entry) for entry in self.allowlist]
        object.__setattr__(self, "_hosts", frozenset(p for p in parsed if isinstance(p, str)))
        object.__setattr__(self, "_networks", tuple(p for p in parsed if not isinstance(p, str)))

    @classmethod
    def from_allowlist_string(cls, allowlist: str, **limits: Any) -> UrlPolicy:
        """``"127.0.0.1/32, example.org"`` (as in ``SUPERRES_URL_ALLOWLIST``) → a policy."""
        entries = tuple(e.strip() for e in allowlist.split(",") if e.strip())
        return cls(allowlist=entries, **limits)

    def allows(self, host: str, address: IpAddress) -> bool:
        """Whether ``address`` (which ``host`` resolved to) may be contacted."""
        if host in self._hosts or is_public_address(address):
            return True
        candidates = {address, _unwrap(address)}
        return any(a.version == n.version and a in n for a in candidates for n in self._networks)


def is_public_address(address: IpAddress) -> bool:
    """True only for globally routable unicast addresses (IPv4-mapped and 6to4 forms unwrapped)."""
    address = _unwrap(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        if address.sixtofour is not None and not is_public_address(address.sixtofour):
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


def check_url(
    url: str, policy: UrlPolicy, resolve: Resolver = socket.getaddrinfo
) -> list[IpAddress]:
    """The addresses ``url`` may be fetched from (resolver order), or ``UrlRefusedError``."""
    return list(_check(url, policy, resolve).addresses)


# --- fetch (GET) ----------------------------------------------------------------------------


def fetch(url: str, policy: UrlPolicy, *, resolve: Resolver = socket.getaddrinfo) -> bytes:
    """The body of ``url`` (GET, redirects re-checked), at most ``policy.max_bytes``."""
    deadline = time.monotonic() + policy.total_timeout_s
    with _transport(policy) as transport:
        for _ in range(policy.max_redirects + 1):
            target = _check(url, policy, resolve)
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
            target = await asyncio.to_thread(_check, url, policy, resolve)
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
    target = _check(url, policy, resolve)
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
            target = await asyncio.to_thread(_check, url, policy, resolve)
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


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str  # ASCII (IDNA) host name or address literal
    addresses: tuple[IpAddress, ...]


def _check(url: str, policy: UrlPolicy, resolve: Resolver) -> _Target:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, UnicodeError) as e:
        raise UrlRefusedError(f"not a valid URL: {e}") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefusedError(f"only http and https URLs are fetched, not {parsed.scheme!r}")
    if parsed.userinfo:
        raise UrlRefusedError("URLs with credentials (user:password@) are not fetched")
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not (_HOSTNAME.fullmatch(host) or _is_address(host)) or port == 0:
        raise UrlRefusedError("the URL names no valid host or port")
    try:
        records = resolve(host, port)
    except (OSError, UnicodeError):
        raise UrlRefusedError(f"host {host!r} does not resolve") from None
    found: dict[IpAddress, None] = {}  # ordered, without duplicates
    for family, *_, sockaddr in records:
        if family in (socket.AF_INET, socket.AF_INET6):
            found[ipaddress.ip_address(sockaddr[0])] = None
    if not found:
        raise UrlRefusedError(f"host {host!r} does not resolve")
    if not all(policy.allows(host, address) for address in found):
        # The address stays out of the message: it is shown to the client (an internal DNS oracle).
        raise UrlRefusedError(f"host {host!r} resolves to a non-public address")
    return _Target(parsed.copy_with(fragment=None), host, tuple(found))


def _allow_entry(entry: str) -> str | IpNetwork:
    text = entry.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_network(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    with contextlib.suppress(UnicodeError):
        text = text.encode("idna").decode("ascii")
    if not _HOSTNAME.fullmatch(text):
        raise InvalidOptionError(
            f"URL allowlist entry {entry!r} is neither a host name nor an address or CIDR "
            "(host bits must be zero: 10.0.0.0/8, not 10.0.0.1/8)"
        )
    return text


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _unwrap(address: IpAddress) -> IpAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _request(
    target: _Target,
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
    target: _Target,
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
    raise AssertionError("unreachable: _check returns at least one address")


async def _asend(
    transport: httpx.AsyncHTTPTransport,
    target: _Target,
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
    raise AssertionError("unreachable: _check returns at least one address")


def _redirect(response: httpx.Response, target: _Target, policy: UrlPolicy) -> str | None:
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
def _translated(target: _Target) -> Iterator[None]:
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
