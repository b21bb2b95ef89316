"""The local S3 server's free-port check, against real sockets on 127.0.0.1 (no S3 server)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devtools.local_s3 import HOST, LocalS3Error, MiniPorts, port_is_free
from devtools.local_s3.ports import _hold


def _listener() -> socket.socket:
    """A listening socket that sets SO_REUSEADDR, as SeaweedFS (any Go server) does."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((HOST, 0))
    server.listen()
    return server


def _leave_time_wait(server: socket.socket) -> None:
    """One connection to ``server``, closed by the server side first: TIME_WAIT stays on its port."""
    with socket.create_connection(server.getsockname(), timeout=5) as client:
        accepted, _ = server.accept()
        accepted.close()  # the server closes first (as after serving a download) ...
        assert client.recv(1) == b""  # ... the client sees the FIN and closes too
    # the client's close completes the handshake: the server side now sits in TIME_WAIT


def _time_wait_on(port: int) -> bool:
    """Whether the kernel holds a TIME_WAIT connection on local ``port`` (Linux's /proc/net/tcp)."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("no /proc/net/tcp to see TIME_WAIT connections in")
    time_wait = "06"
    for line in table.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.rsplit(":", 1)[1], 16) == port and state == time_wait:
            return True
    return False


def test_a_port_with_a_live_listener_is_in_use() -> None:
    with _listener() as server:
        port = server.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(LocalS3Error, match=f"port {port} .* in use"):
            MiniPorts.pick(port)


def test_time_wait_left_by_a_stopped_server_does_not_make_its_port_busy() -> None:
    """``make run`` again within a minute of one that served downloads: the S3 port is free."""
    server = _listener()
    port = server.getsockname()[1]
    try:
        _leave_time_wait(server)
    finally:
        server.close()  # the server stops listening
    assert _time_wait_on(port), "the test did not produce the TIME_WAIT it is about"

    assert port_is_free(port)
    # What a real server does next: listen there again, with SO_REUSEADDR.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((HOST, port))
        again.listen()
        assert not port_is_free(port)


def test_picked_ports_are_distinct_and_free() -> None:
    ports = MiniPorts.pick()
    http = [ports.s3, ports.master, ports.volume, ports.filer, ports.admin]
    every = http + [ports.grpc(name) for name in ("s3", "master", "volume", "filer", "admin")]
    assert len(set(every)) == len(every)
    assert all(port_is_free(port) for port in every)


def test_a_held_port_cannot_be_picked_twice() -> None:
    """With SO_REUSEADDR two merely bound sockets may share a port: holding must listen."""
    held: list[socket.socket] = []
    try:
        with _listener() as probe:
            port = probe.getsockname()[1]
        assert _hold(port, held)
        assert not _hold(port, held)
        assert not port_is_free(port)
    finally:
        for sock in held:
            sock.close()
