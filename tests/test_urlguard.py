"""The guarded URL client against real servers on 127.0.0.1 and a fake resolver.

Names are resolved by fake resolvers only (no DNS); the only addresses connected to are the test
servers' 127.0.0.1, opened by an explicit allowlist. Public addresses appear only in checks that
never connect.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from models.errors import ImageTooLargeError, InvalidOptionError
from models.urlguard import UrlFetchError, UrlTooLargeError, afetch, apost_json, fetch, post_json
from models.urlpolicy import UrlPolicy, UrlRefusedError, check_url, is_public_address
from tests.httpserver import unused_port

LOOPBACK = UrlPolicy(
    allowlist=("127.0.0.1/32",), connect_timeout_s=2, read_timeout_s=2, total_timeout_s=5
)
SERVER_LIMIT_S = 10.0  # a handler that waits or streams gives up after this


# --- a local server with programmable routes ----------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    host: str | None
    headers: dict[str, str]
    body: bytes


Route = Callable[["_Handler"], None]


@dataclass
class Server:
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0  # body bytes written by `endless`
    port: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


class _Handler(BaseHTTPRequestHandler):
    server: _Http

    def do_GET(self) -> None:
        self._dispatch(b"")

    def do_POST(self) -> None:
        self._dispatch(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def _dispatch(self, body: bytes) -> None:
        state = self.server.state
        state.seen.append(
            Seen(self.command, self.path, self.headers.get("Host"), dict(self.headers), body)
        )
        state.routes.get(self.path, lambda h: h.reply(404, b"no route"))(self)

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Http(ThreadingHTTPServer):
    daemon_threads = True
    state: Server

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-body are what these tests do


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = _Http(("127.0.0.1", 0), _Handler)
    httpd.state = Server(port=httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield httpd.state
    finally:
        httpd.state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def ok(body: bytes) -> Route:
    return lambda h: h.reply(200, body, {"Content-Type": "image/png"})


def redirect(location: str, status: int = 302) -> Route:
    return lambda h: h.reply(status, b"", {"Location": location})


def wait_then(route: Route) -> Route:
    def handle(h: _Handler) -> None:
        h.server.state.stop.wait(SERVER_LIMIT_S)
        route(h)

    return handle


def endless(h: _Handler) -> None:
    """200 with no Content-Length and a body that never ends (until the client hangs up)."""
    h.send_response(200)
    h.end_headers()
    chunk = b"\0" * 65536
    while not h.server.state.stop.is_set() and h.server.state.sent < 1 << 30:
        h.wfile.write(chunk)
        h.server.state.sent += len(chunk)


def drip(h: _Handler) -> None:
    """A byte every 50 ms: each read is quick, the whole body is not."""
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    while not h.server.state.stop.wait(0.05):
        h.wfile.write(b".")
        h.wfile.flush()


# --- fake resolvers ---------------------------------------------------------------------------


def records(addresses: Sequence[str], port: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for a in addresses:
        if ipaddress.ip_address(a).version == 6:
            out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
        else:
            out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
    return out


class FakeDns:
    """Names → addresses; address literals go to the real resolver in numeric mode (no DNS)."""

    def __init__(self, names: dict[str, Sequence[str]] | None = None) -> None:
        self.names = dict(names or {})
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        if host in self.names:
            return records(self.names[host], port)
        return socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST)


def no_dns(host: str, port: int) -> list[tuple[Any, ...]]:
    raise AssertionError(f"the resolver was asked for {host!r}")


def run_fetch(mode: str, url: str, policy: UrlPolicy, **kw: Any) -> bytes:
    return asyncio.run(afetch(url, policy, **kw)) if mode == "async" else fetch(url, policy, **kw)


def run_post(mode: str, url: str, body: bytes, headers: dict[str, str], policy: UrlPolicy) -> int:
    if mode == "async":
        return asyncio.run(apost_json(url, body, headers, policy, resolve=FakeDns()))
    return post_json(url, body, headers, policy, resolve=FakeDns())


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


# --- address checks (no connection) -----------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "127.1.2.3",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
        "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
        "2001::1",  # Teredo
    ],
)
def test_a_name_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    with pytest.raises(UrlRefusedError, match="non-public"):
        check_url("https://evil.test/x.png", UrlPolicy(), FakeDns({"evil.test": [address]}))
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8000/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://0.0.0.0/",
        "http://10.1.2.3/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f.1/",
    ],
)
def test_address_literals_are_checked_like_names(url: str) -> None:
    with pytest.raises(UrlRefusedError):
        check_url(url, UrlPolicy(), FakeDns())


def test_public_addresses_pass_and_come_back_in_order() -> None:
    public = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:8.8.8.8"]
    dns = FakeDns({"example.test": [*public, "93.184.216.34"]})
    got = check_url("https://example.test/a.png?x=1#f", UrlPolicy(), dns)
    assert got == [ipaddress.ip_address(a) for a in public]  # duplicates dropped
    assert dns.calls == ["example.test"]


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    dns = FakeDns({"mixed.test": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(UrlRefusedError):
        check_url("http://mixed.test/", UrlPolicy(), dns)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.test/a.png",
        "file:///etc/passwd",
        "gopher://example.test/",
        "data:image/png;base64,AAAA",
        "http://user:secret@example.test/a.png",
        "https://user@example.test/a.png",
        "http:///a.png",
        "example.test/a.png",
        "http://exa mple.test/",
    ],
)
def test_bad_schemes_credentials_and_non_urls_are_refused_before_resolving(url: str) -> None:
    with pytest.raises(UrlRefusedError):
        check_url(url, UrlPolicy(), no_dns)


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(UrlRefusedError, match="does not resolve"):
        check_url("http://nowhere.test/", UrlPolicy(), FakeDns())


def test_the_allowlist_opens_hosts_and_cidrs() -> None:
    policy = UrlPolicy.from_allowlist_string(" 10.0.0.0/8, Internal.Test., fd00::/8 ,,")
    assert policy.allowlist == ("10.0.0.0/8", "Internal.Test.", "fd00::/8")
    dns = FakeDns({"internal.test": ["192.168.0.9"], "other.test": ["192.168.0.9"]})
    assert check_url("http://INTERNAL.test/", policy, dns) == [ipaddress.ip_address("192.168.0.9")]
    with pytest.raises(UrlRefusedError):
        check_url("http://other.test/", policy, dns)
    assert check_url("http://10.9.8.7/", policy, dns)
    assert check_url("http://[::ffff:10.9.8.7]/", policy, dns)  # mapped form of an allowed v4
    assert check_url("http://[fd00::5]/", policy, dns)
    single = UrlPolicy.from_allowlist_string("127.0.0.1")
    assert check_url("http://127.0.0.1/", single, dns)
    with pytest.raises(UrlRefusedError):
        check_url("http://127.0.0.2/", single, dns)


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "10.0.0.0/33", "http://x.test", "a b", "*.x.test"])
def test_bad_allowlist_entries_are_refused_with_a_sentence(entry: str) -> None:
    with pytest.raises(InvalidOptionError, match="allowlist entry"):
        UrlPolicy.from_allowlist_string(entry)


@pytest.mark.parametrize(
    "limits",
    [{"max_bytes": 0}, {"read_timeout_s": 0}, {"total_timeout_s": -1}, {"max_redirects": -1}],
)
def test_bad_limits_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError, match="must be"):
        UrlPolicy(**limits)


def test_error_kinds_map_onto_the_existing_http_rules() -> None:
    assert issubclass(UrlRefusedError, InvalidOptionError)  # 400 invalid_option
    assert issubclass(UrlTooLargeError, ImageTooLargeError)  # 413 too_large
    assert issubclass(UrlTooLargeError, UrlFetchError)


# --- fetching ---------------------------------------------------------------------------------


@MODES
def test_an_allowlisted_loopback_url_is_fetched(server: Server, mode: str) -> None:
    server.routes["/a.png?size=1"] = ok(b"png bytes")
    assert run_fetch(mode, server.url("/a.png?size=1"), LOOPBACK, resolve=FakeDns()) == b"png bytes"
    (seen,) = server.seen
    assert seen.path == "/a.png?size=1" and seen.host == f"127.0.0.1:{server.port}"
    assert seen.headers["User-Agent"].startswith("superres-fetch/")


@MODES
def test_loopback_is_refused_without_the_allowlist_before_any_connection(
    server: Server, mode: str
) -> None:
    server.routes["/a.png"] = ok(b"x")
    dns = FakeDns({"sneaky.test": ["127.0.0.1"]})
    for url in (server.url("/a.png"), server.url("/a.png", host="sneaky.test")):
        with pytest.raises(UrlRefusedError):
            run_fetch(mode, url, UrlPolicy(), resolve=dns)
    assert server.seen == []


@MODES
def test_redirects_are_followed_and_each_hop_is_checked(server: Server, mode: str) -> None:
    dns = FakeDns({"cdn.test": ["127.0.0.1"]})
    server.routes["/start"] = redirect(server.url("/next", host="cdn.test"), 301)
    server.routes["/next"] = redirect("../final.png?v=2", 307)
    server.routes["/final.png?v=2"] = ok(b"done")
    assert run_fetch(mode, server.url("/start"), LOOPBACK, resolve=dns) == b"done"
    assert server.paths() == ["/start", "/next", "/final.png?v=2"]
    assert server.seen[1].host == f"cdn.test:{server.port}"  # the name, sent to the checked IP
    assert dns.calls == ["127.0.0.1", "cdn.test", "cdn.test"]  # one resolution per hop


@MODES
@pytest.mark.parametrize(
    "target", ["http://127.0.0.1:{port}/secret", "http://169.254.169.254/latest/", "file:///etc/x"]
)
def test_a_redirect_to_a_forbidden_target_is_refused(
    server: Server, mode: str, target: str
) -> None:
    policy = UrlPolicy(allowlist=("images.test",), read_timeout_s=2)  # the name, not 127.0.0.1
    server.routes["/r"] = redirect(target.format(port=server.port))
    server.routes["/secret"] = ok(b"secret")
    dns = FakeDns({"images.test": ["127.0.0.1"]})
    with pytest.raises(UrlRefusedError):
        run_fetch(mode, server.url("/r", host="images.test"), policy, resolve=dns)
    assert server.paths() == ["/r"]


@MODES
def test_a_redirect_loop_is_capped(server: Server, mode: str) -> None:
    server.routes["/loop"] = redirect("/loop")
    with pytest.raises(UrlFetchError, match="more than 3 redirects"):
        run_fetch(mode, server.url("/loop"), LOOPBACK, resolve=FakeDns())
    assert server.paths() == ["/loop"] * 4  # the first request and 3 redirects


def test_no_redirects_when_max_redirects_is_zero(server: Server) -> None:
    server.routes["/r"] = redirect("/a")
    server.routes["/a"] = ok(b"a")
    policy = UrlPolicy(allowlist=("127.0.0.1",), max_redirects=0)
    with pytest.raises(UrlFetchError, match="more than 0 redirects"):
        fetch(server.url("/r"), policy, resolve=FakeDns())
    assert server.paths() == ["/r"]


@MODES
def test_an_error_status_is_a_fetch_error_carrying_it(server: Server, mode: str) -> None:
    with pytest.raises(UrlFetchError, match="HTTP 404") as caught:
        run_fetch(mode, server.url("/missing"), LOOPBACK, resolve=FakeDns())
    assert caught.value.status == 404


@MODES
def test_a_closed_port_is_a_fetch_error(mode: str) -> None:
    with pytest.raises(UrlFetchError, match="could not fetch"):
        run_fetch(mode, f"http://127.0.0.1:{unused_port()}/", LOOPBACK, resolve=FakeDns())


@MODES
def test_an_endless_body_is_cut_at_the_cap_while_streaming(server: Server, mode: str) -> None:
    server.routes["/big"] = endless
    policy = UrlPolicy(allowlist=("127.0.0.1/32",), max_bytes=1 << 20, read_timeout_s=2)
    with pytest.raises(UrlTooLargeError, match="over the limit of 1048576") as caught:
        run_fetch(mode, server.url("/big"), policy, resolve=FakeDns())
    assert caught.value.limit == 1 << 20
    time.sleep(0.1)
    assert server.sent < 64 << 20  # the client hung up: far from the server's 1 GiB


@MODES
def test_a_declared_length_over_the_cap_is_refused_before_the_body(
    server: Server, mode: str
) -> None:
    def huge(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10**12))
        h.end_headers()
        h.wfile.flush()
        h.server.state.stop.wait(SERVER_LIMIT_S)

    server.routes["/huge"] = huge
    started = time.monotonic()
    with pytest.raises(UrlTooLargeError, match="1000000000000 bytes"):
        run_fetch(mode, server.url("/huge"), LOOPBACK, resolve=FakeDns())
    assert time.monotonic() - started < 1.0


def test_a_body_of_exactly_the_cap_is_accepted(server: Server) -> None:
    server.routes["/a"] = ok(b"x" * 1000)
    policy = UrlPolicy(allowlist=("127.0.0.1/32",), max_bytes=1000)
    assert fetch(server.url("/a"), policy, resolve=FakeDns()) == b"x" * 1000


@MODES
def test_a_server_that_does_not_answer_hits_the_read_timeout(server: Server, mode: str) -> None:
    server.routes["/slow"] = wait_then(ok(b"late"))
    policy = UrlPolicy(allowlist=("127.0.0.1/32",), read_timeout_s=0.3, total_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(UrlFetchError, match="did not answer in time"):
        run_fetch(mode, server.url("/slow"), policy, resolve=FakeDns())
    assert 0.25 < time.monotonic() - started < 2.0


@MODES
def test_a_dripping_body_hits_the_total_timeout(server: Server, mode: str) -> None:
    server.routes["/drip"] = drip
    policy = UrlPolicy(allowlist=("127.0.0.1/32",), read_timeout_s=1, total_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(UrlFetchError, match="no answer within the total timeout"):
        run_fetch(mode, server.url("/drip"), policy, resolve=FakeDns())
    assert 0.45 < time.monotonic() - started < 1.5


# --- DNS rebinding ----------------------------------------------------------------------------


class Rebinder:
    """Answers the first lookup with an allowed address, every later one with another address."""

    def __init__(self, first: str, later: str) -> None:
        self.first, self.later = first, later
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        return records([self.first if len(self.calls) == 1 else self.later], port)


@pytest.fixture
def rebinding_system_dns(monkeypatch: pytest.MonkeyPatch) -> Rebinder:
    """The same rebinding answers from socket.getaddrinfo for names (httpx/anyio's path)."""
    rebinder = Rebinder("127.0.0.1", "127.0.0.2")  # 127.0.0.2: loopback, not allow-listed
    real = socket.getaddrinfo

    def system(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return rebinder(host, port)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", system)
    return rebinder


@MODES
def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    server: Server, mode: str, rebinding_system_dns: Rebinder
) -> None:
    server.routes["/a.png"] = ok(b"the checked server")
    url = server.url("/a.png", host="rebind.test")
    body = run_fetch(mode, url, LOOPBACK, resolve=rebinding_system_dns)
    assert body == b"the checked server"
    assert rebinding_system_dns.calls == ["rebind.test"]  # nobody resolved it again
    assert server.seen[0].host == f"rebind.test:{server.port}"


@MODES
def test_a_rebinding_between_redirect_hops_is_refused(
    server: Server, mode: str, rebinding_system_dns: Rebinder
) -> None:
    server.routes["/r"] = redirect("/a.png")  # same host: resolved again, now to 127.0.0.2
    server.routes["/a.png"] = ok(b"x")
    with pytest.raises(UrlRefusedError):
        run_fetch(
            mode, server.url("/r", host="rebind.test"), LOOPBACK, resolve=rebinding_system_dns
        )
    assert server.paths() == ["/r"]


# --- https: the name is verified while the connection goes to the checked address ------------


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(server: Server, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A second server on 127.0.0.1 speaking TLS with a certificate for ``pinned.test``."""
    cert, key = _self_signed(tmp_path, "pinned.test")
    httpd = _Http(("127.0.0.1", 0), _Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.state = Server(routes={"/a.png": ok(b"over tls")}, port=httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield httpd.state, cert
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@MODES
def test_https_verifies_the_name_while_connecting_to_the_checked_address(
    tls_server: tuple[Server, Path], mode: str
) -> None:
    state, cert = tls_server
    policy = UrlPolicy(
        allowlist=("127.0.0.1/32",), ssl_context=ssl.create_default_context(cafile=cert)
    )
    dns = FakeDns({"pinned.test": ["127.0.0.1"], "wrong.test": ["127.0.0.1"]})
    url = f"https://pinned.test:{state.port}/a.png"
    assert run_fetch(mode, url, policy, resolve=dns) == b"over tls"
    assert state.seen[0].host == f"pinned.test:{state.port}"
    with pytest.raises(UrlFetchError, match=r"could not fetch from wrong\.test"):
        run_fetch(mode, f"https://wrong.test:{state.port}/a.png", policy, resolve=dns)


# --- webhooks (POST) --------------------------------------------------------------------------


@MODES
def test_post_sends_the_body_and_returns_the_status(server: Server, mode: str) -> None:
    server.routes["/hook"] = lambda h: h.reply(204)
    server.routes["/broken"] = lambda h: h.reply(500, b"oops")
    body = b'{"id": "job-1"}'
    headers = {"webhook-id": "msg_1", "webhook-signature": "v1,abc"}
    assert run_post(mode, server.url("/hook"), body, headers, LOOPBACK) == 204
    assert run_post(mode, server.url("/broken"), body, {}, LOOPBACK) == 500
    seen = server.seen[0]
    assert (seen.method, seen.body) == ("POST", body)
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["webhook-id"] == "msg_1"


@MODES
def test_post_does_not_follow_redirects(server: Server, mode: str) -> None:
    server.routes["/hook"] = redirect("/elsewhere", 307)
    assert run_post(mode, server.url("/hook"), b"{}", {}, LOOPBACK) == 307
    assert server.paths() == ["/hook"]


@MODES
def test_post_to_a_private_address_is_refused_before_connecting(server: Server, mode: str) -> None:
    with pytest.raises(UrlRefusedError):
        run_post(mode, server.url("/hook"), b"{}", {}, UrlPolicy())
    assert server.seen == []


@MODES
def test_post_to_a_silent_server_times_out(server: Server, mode: str) -> None:
    server.routes["/hook"] = wait_then(lambda h: h.reply(200))
    policy = UrlPolicy(allowlist=("127.0.0.1/32",), read_timeout_s=0.3)
    with pytest.raises(UrlFetchError, match="did not answer in time"):
        run_post(mode, server.url("/hook"), b"{}", {}, policy)
