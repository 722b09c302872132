"""Loopback ports for the servers the tests and benchmarks start."""
from __future__ import annotations

import itertools
import os
import random
import socket
from pathlib import Path


def _port_slice() -> range:
    """This process's ports for servers: below the kernel's ephemeral range, where every outgoing
    connection (to PostgreSQL, to the emulator, ...) takes its local port, so no client socket
    takes a port between free_port() and the server's bind. A slice of its own per pytest-xdist
    worker, so that two workers never pick the same port either."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = 10_000 if low > 12_000 else 1024
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index, count = int(worker[2:] or 0), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = (low - first) // max(count, 1)
    return range(first + index * width, first + (index + 1) * width)


_PORTS = _port_slice()
_next_port = itertools.count(random.randrange(len(_PORTS)))  # another run, other ports first


def free_port() -> int:
    """A loopback port nothing listens on now, for a server the caller starts next."""
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_next_port) % len(_PORTS)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")
