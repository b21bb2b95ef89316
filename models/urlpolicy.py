"""Which URLs that clients give us (``image_url``, ``webhook_url``) may be contacted at all.

A URL passes only if it is http(s), carries no credentials, and *every* address its host resolves
to is public: no private, loopback, link-local (cloud metadata at 169.254.169.254), CGNAT,
multicast, reserved or unspecified address, nor an IPv4-mapped or 6to4 IPv6 form of one.
``UrlPolicy.allowlist`` opens chosen hosts or CIDRs on purpose (``127.0.0.1/32`` in tests).
``check`` resolves the host once and returns the addresses it checked: ``models.urlguard``
connects to those and never resolves again (DNS rebinding).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from models.errors import InvalidOptionError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Iterable[tuple[Any, ...]]]  # socket.getaddrinfo(host, port)

_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


class UrlRefusedError(InvalidOptionError):
    """The URL may not be fetched: not http(s), has credentials, its host does not resolve, or
    resolves to an address that is not public (and not allow-listed). Nothing was sent."""


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
    return list(check(url, policy, resolve).addresses)


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed, with the addresses it may be fetched from (resolver order)."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host name or address literal
    addresses: tuple[IpAddress, ...]


def check(url: str, policy: UrlPolicy, resolve: Resolver = socket.getaddrinfo) -> CheckedUrl:
    """``url`` checked against ``policy`` after resolving its host once, or ``UrlRefusedError``."""
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
    return CheckedUrl(parsed.copy_with(fragment=None), host, tuple(found))


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
