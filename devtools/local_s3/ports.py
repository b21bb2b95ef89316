"""Ports for ``weed mini`` on 127.0.0.1: is a port free, and a free set for all of its services.

A port counts as free when a server that sets ``SO_REUSEADDR`` (SeaweedFS does, as Go servers do)
could listen on it. The probe sets it too: a plain ``bind`` also fails on the TIME_WAIT connections
that a server leaves on its own port for a minute after it served downloads, which the server
itself would not mind.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

from devtools.local_s3.errors import LocalS3Error

HOST = "127.0.0.1"
DEFAULT_S3_PORT = 8333
# weed's convention is gRPC port = HTTP port + 10000, and its admin worker dials admin port + 10000
# whatever -admin.port.grpc says, so every service keeps that pair.
GRPC_OFFSET = 10_000
SERVICES = ("master", "volume", "filer", "s3", "admin")
# Above Ray's worker ports (10002-19999); with +10000 still below the kernel's ephemeral range.
_PICK_RANGE = (20_000, 22_700)


def port_is_free(port: int) -> bool:
    """Whether a server using ``SO_REUSEADDR`` could listen on ``port`` of 127.0.0.1 now."""
    sock = _listen(port)
    if sock is None:
        return False
    sock.close()
    return True


@dataclass(frozen=True)
class MiniPorts:
    """HTTP ports of the ``weed mini`` services; each gRPC port is the HTTP port + 10000."""

    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    @classmethod
    def pick(cls, s3: int | None = None) -> MiniPorts:
        """Free ports on 127.0.0.1 for every service; ``s3`` fixed when given."""
        held: list[socket.socket] = []
        try:
            if s3 is not None:
                for port in (s3, s3 + GRPC_OFFSET):
                    if not _hold(port, held):
                        raise LocalS3Error(
                            f"port {port} on {HOST} is in use (S3 port {s3} needs it): is another "
                            "local S3 server running? Stop it or choose another --port"
                        )
            rng = random.Random()
            picked: list[int] = []
            need = len(SERVICES) - (s3 is not None)
            for _ in range(500):
                port = rng.randrange(*_PICK_RANGE)
                if _hold(port, held) and _hold(port + GRPC_OFFSET, held):
                    picked.append(port)
                    if len(picked) == need:
                        break
            if len(picked) < need:
                raise LocalS3Error(f"found no free port pairs on {HOST} in {_PICK_RANGE}")
        finally:
            for sock in held:
                sock.close()
        if s3 is None:
            s3 = picked.pop()
        return cls(s3=s3, master=picked[0], volume=picked[1], filer=picked[2], admin=picked[3])

    def grpc(self, service: str) -> int:
        port: int = getattr(self, service)
        return port + GRPC_OFFSET

    def args(self) -> list[str]:
        return [
            arg
            for name in SERVICES
            for arg in (
                f"-{name}.port={getattr(self, name)}",
                f"-{name}.port.grpc={self.grpc(name)}",
            )
        ]


def _hold(port: int, held: list[socket.socket]) -> bool:
    """Listen on ``port`` (kept open in ``held`` so it is not picked twice); False if it is taken.

    A listening socket, not just a bound one: with ``SO_REUSEADDR`` two sockets may bind the same
    port as long as neither listens, so only a listener keeps the port from being picked again.
    """
    sock = _listen(port)
    if sock is None:
        return False
    held.append(sock)
    return True


def _listen(port: int) -> socket.socket | None:
    """A socket listening on ``port`` of 127.0.0.1 with ``SO_REUSEADDR``; None if it is taken."""
    if not 0 < port < 65_536:
        raise LocalS3Error(f"port {port} is out of range (the S3 port must be at most 55535)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(1)
    except OSError:
        sock.close()
        return None
    return sock
