"""A local HTTP file server for tests: in-memory files, Range requests and injected failures.

    with FileServer({"w.pth": data}) as server:
        server.fail("w.pth", truncate_after=1000)  # next answer: 1000 bytes, then it hangs up
        fetch(server.url("w.pth"))
        assert server.requests("w.pth")[1].range == "bytes=1000-"

Binds 127.0.0.1 on an ephemeral port; handlers run in threads, so concurrent clients are served.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_HOLD_LIMIT_S = 30.0  # a held response is released after this, so a failed test cannot hang


@dataclass(frozen=True)
class Request:
    name: str
    range: str | None  # the Range header as sent
    status: int  # the status answered (0 if the client went away first)


@dataclass
class _Fault:
    status: int | None
    truncate_after: int | None
    times: int
    headers: Mapping[str, str]


class FileServer:
    """Serves ``files`` (name → bytes) at ``/<name>``; a context manager starts and stops it."""

    def __init__(self, files: Mapping[str, bytes] | None = None, *, honour_range: bool = True):
        self.files: dict[str, bytes] = dict(files or {})
        self.honour_range = honour_range
        self._lock = threading.Lock()
        self._faults: dict[str, list[_Fault]] = {}
        self._log: list[Request] = []
        self._open = threading.Event()
        self._open.set()
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> FileServer:
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not started: use it as a context manager")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    # --- control ----------------------------------------------------------------------------

    def fail(
        self,
        name: str,
        *,
        status: int | None = None,
        truncate_after: int | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Make the next ``times`` requests of ``name`` answer ``status`` or a truncated body.

        Faults queue up in call order. ``truncate_after=N`` sends the full headers, N body bytes,
        then closes the connection. ``headers`` go with a ``status`` answer (``Retry-After``...).
        """
        if (status is None) == (truncate_after is None):
            raise ValueError("give exactly one of status or truncate_after")
        with self._lock:
            fault = _Fault(status, truncate_after, times, dict(headers or {}))
            self._faults.setdefault(name, []).append(fault)

    def hold(self) -> None:
        """Hold every response (after recording its request) until ``release``."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def requests(self, name: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._log if name is None or r.name == name]

    def count(self, name: str | None = None) -> int:
        return len(self.requests(name))

    # --- used by the handler ----------------------------------------------------------------

    def _next_fault(self, name: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(name, [])
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            return fault

    def _record(self, name: str, range_header: str | None) -> int:
        with self._lock:
            self._log.append(Request(name, range_header, 0))
            return len(self._log) - 1

    def _answered(self, index: int, status: int) -> None:
        with self._lock:
            old = self._log[index]
            self._log[index] = Request(old.name, old.range, status)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out and hung up is part of the tests, not an error to print.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/").split("?", 1)[0]
            range_header = self.headers.get("Range")
            index = server._record(name, range_header)
            server._open.wait(_HOLD_LIMIT_S)
            fault = server._next_fault(name)
            data = server.files.get(name)
            if fault is not None and fault.status is not None:
                self._simple(index, fault.status, fault.headers)
                return
            if data is None:
                self._simple(index, 404)
                return
            start, end = 0, len(data)
            status = 200
            if range_header and server.honour_range:
                parsed = _parse_range(range_header, len(data))
                if parsed is None:
                    self._simple(index, 416, {"Content-Range": f"bytes */{len(data)}"})
                    return
                start, end = parsed
                status = 206
            body = data[start:end]
            server._answered(index, status)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if fault is not None and fault.truncate_after is not None:
                self.wfile.write(body[: fault.truncate_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def _simple(
            self, index: int, status: int, headers: Mapping[str, str] | None = None
        ) -> None:
            server._answered(index, status)
            body = f"{status}\n".encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler


def _parse_range(header: str, length: int) -> tuple[int, int] | None:
    """[start, end) of a single ``bytes=`` range, or None when unsatisfiable."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix range: the last N bytes
        return (max(length - int(last), 0), length) if int(last) > 0 else None
    start = int(first)
    end = min(int(last) + 1, length) if last else length
    return (start, end) if start < length and start < end else None


def unused_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
