"""The deadline watchdog's pair of calls for a block whose socket comes later (a database
connection made or taken within a web request's use: app/database_deadline.py)."""
from __future__ import annotations

import socket

from app.deadlines import WATCHDOG
from tests.helpers import wait_until


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    return ours, theirs


def test_the_socket_in_use_when_the_time_is_up_is_shut_and_the_one_it_replaced_is_not():
    first, first_peer = _pair()
    second, _second_peer = _pair()
    entry = WATCHDOG.arm(0.2, first)
    assert WATCHDOG.attach(entry, second) is first
    wait_until(lambda: entry.fired, 5, "the deadline to pass")
    assert second.recv(1) == b""  # shut: a read blocked there returns at once
    first_peer.sendall(b"x")
    assert first.recv(1) == b"x"
    WATCHDOG.disarm(entry)


def test_a_socket_attached_after_the_time_is_up_is_shut_at_once():
    late, _peer = _pair()
    entry = WATCHDOG.arm(0.01)  # no socket yet: a connection still being made
    wait_until(lambda: entry.fired, 5, "the deadline to pass")
    assert WATCHDOG.attach(entry, late) is None
    assert late.recv(1) == b""
    WATCHDOG.disarm(entry)


def test_a_block_that_ended_in_time_leaves_its_socket_alone():
    sock, peer = _pair()
    entry = WATCHDOG.arm(0.05, sock)
    WATCHDOG.disarm(entry)
    later = WATCHDOG.arm(0.1)  # a deadline after the first's: the watchdog has come past it
    wait_until(lambda: later.fired, 5, "a later deadline to pass")
    peer.sendall(b"x")
    assert sock.recv(1) == b"x" and not entry.fired
