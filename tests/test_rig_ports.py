"""The parallel suite's loopback ports (tests/rig/ports.py): a server a test starts must find
its port free, whatever the other xdist workers and every client socket on the machine do."""
from __future__ import annotations

import itertools
import socket
from pathlib import Path

from tests.rig import ports


def test_each_worker_has_its_own_ports_below_the_kernels_ephemeral_range(monkeypatch):
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    slices = []
    for worker in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        slices.append(set(ports._port_slice()))
    assert all(len(s) > 1000 for s in slices)
    assert all(max(s) < low for s in slices)  # no outgoing connection takes one of them
    for i, one in enumerate(slices):
        for other in slices[i + 1:]:
            assert not one & other


def test_free_port_skips_a_port_taken_and_gives_one_a_server_can_bind(monkeypatch):
    for i in range(len(ports._PORTS) - 1):
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", ports._PORTS[i]))
        except OSError:
            taken.close()
            continue
        break  # the first free port of the slice, now taken
    taken.listen()
    try:
        monkeypatch.setattr(ports, "_next_port", itertools.count(i))  # the taken one comes next
        given = ports.free_port()
        assert given != ports._PORTS[i] and given in ports._PORTS
        with socket.socket() as server:
            server.bind(("127.0.0.1", given))
    finally:
        taken.close()
