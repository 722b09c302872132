"""Overall deadlines for network calls.

A socket's timeout bounds each read, not a call: a server that sends one byte a second never
trips it, and holds a worker thread as long as it likes (an LDAP bind, Jira's status line and
headers). Every Jira and LDAP call is therefore guarded: when its deadline passes, one watchdog
thread per process shuts the socket down, the blocked read returns at once, and the caller
reports "no answer within N s".

The watchdog thread starts on the first guarded call in a process (after gunicorn's fork),
never in create_app().
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .per_process import PerProcess


@dataclass(eq=False)
class Guard:
    deadline: float
    sock: socket.socket | None = None
    done: bool = False
    fired: bool = False  # the deadline passed: the socket was shut


class Watchdog:
    def __init__(self) -> None:
        # (deadline, seq, guard): tuples compare in C (a dataclass's __lt__ is Python, and a
        # heap of a busy sweep's guards holds tens of thousands until their deadlines come)
        self._heap: list[tuple[float, int, Guard]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread = PerProcess(self._start)  # a forked child starts its own

    @contextmanager
    def guard(self, sock: socket.socket | None, seconds: float) -> Iterator[Guard]:
        """Shut ``sock`` down if the block is still running after ``seconds``."""
        entry = self.arm(seconds, sock) if sock is not None else Guard(time.monotonic() + seconds)
        try:
            yield entry
        finally:
            if sock is not None:
                self.disarm(entry)

    def arm(self, seconds: float, sock: socket.socket | None = None) -> Guard:
        """``guard()`` as a pair of calls, for a block whose socket may come later (attach)."""
        entry = Guard(time.monotonic() + seconds, sock)
        self._thread.get()
        with self._cond:
            heapq.heappush(self._heap, (entry.deadline, next(self._seq), entry))
            if self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def attach(self, entry: Guard, sock: socket.socket) -> socket.socket | None:
        """The socket the block uses from now on (shut at once if its time is up already); the
        one it replaces is returned."""
        with self._cond:
            before, entry.sock = entry.sock, sock
            if entry.fired:
                _shut(sock)
        return before

    def disarm(self, entry: Guard) -> None:
        with self._cond:  # never shut down after the block ended (the socket is reused)
            entry.done = True  # dropped from the heap lazily, when it comes first

    def _start(self) -> threading.Thread:
        self._cond = threading.Condition()  # the parent's may have been held at the fork
        self._heap = []  # the parent's calls are not this process's
        thread = threading.Thread(target=self._run, name="deadline-watchdog", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                first = self._heap[0][2]
                wait = first.deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                first.fired = True
                if first.sock is not None:
                    _shut(first.sock)


def _shut(sock: socket.socket) -> None:
    try:  # socket's own shutdown, not SSLSocket's (which drops its TLS state first)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # closed meanwhile


WATCHDOG = Watchdog()
guard = WATCHDOG.guard
