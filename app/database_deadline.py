"""A web request's uses of PostgreSQL end within a few seconds, whatever the database does.

A database that stops answering while its host still acknowledges every packet (its process
stopped, its storage stalled, its VM paused) trips none of app/database.py's timeouts: the
query was delivered, the keepalives are answered, the answer never comes. A web worker has two
threads (app/gunicorn_conf.py): a readiness probe and a dashboard refresh waiting there, and
logins went unanswered while /readyz repeated its last "ready".

So while a web request is served (``BoundedUses``), each use of the database by the store (a
read, a statement, a transaction, with the checkout's ping and a new connection's setup), and
each statement of the cluster Jira budget's slots (app/jira_budget.py), is
watched by the deadline watchdog (app/deadlines.py): when its time is up, the connection's
socket is shut, the driver fails at once and the door answers 503 as for any unusable database
(the login path then fails fast: app/known_down.py). Workers, sweeps and the CLI are not
bounded: nobody waits on them, a long transaction of theirs is legitimate, and they go on where
they were once the database answers. SQLite's waits are bounded by its busy timeout already.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from contextlib import nullcontext

from sqlalchemy import event
from sqlalchemy.engine import Engine

from .deadlines import WATCHDOG, Guard

_local = threading.local()  # .seconds: this thread's bound, while it serves a request; .use
_UNBOUNDED = nullcontext()


class NoAnswer(Exception):
    """The database did not answer a web request's use in time (store.UNAVAILABLE)."""


class BoundedUses:
    """WSGI middleware: the requests it passes on use the database ``seconds`` at most each time."""

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds

    def __call__(self, environ, start_response):
        _local.seconds = self.seconds
        try:
            return self.app(environ, start_response)
        finally:
            _local.seconds = None


def use(dbapi_conn=None):
    """``with use():`` around each of the store's uses of the database; ``dbapi_conn``: the
    driver's connection it uses, where it was taken from the pool before (the cluster Jira
    budget's, held for a Jira call: app/jira_budget.py)."""
    seconds = getattr(_local, "seconds", None)
    if seconds is None or getattr(_local, "use", None) is not None:  # unbounded, or within one
        return _UNBOUNDED
    return _Use(seconds, dbapi_conn)


class _Use:
    __slots__ = ("seconds", "guard", "dbapi_conn", "given")

    def __init__(self, seconds: float, given=None):
        self.seconds = seconds
        self.dbapi_conn, self.given = None, given

    def __enter__(self) -> None:
        self.guard: Guard = WATCHDOG.arm(self.seconds)
        _local.use = self
        if self.given is not None:
            self.join(self.given)

    def __exit__(self, exc_type, exc, tb) -> None:
        _local.use = None
        WATCHDOG.disarm(self.guard)
        if self.guard.sock is not None:
            self.guard.sock.close()  # our duplicate of the descriptor; the connection's stays open
        if exc is not None and self.guard.fired and not isinstance(exc, NoAnswer):
            raise self.no_answer() from exc

    def no_answer(self) -> NoAnswer:
        return NoAnswer(f"the database did not answer within {self.seconds:g} s")

    def join(self, dbapi_conn) -> None:
        if dbapi_conn is self.dbapi_conn:
            return
        self.dbapi_conn = dbapi_conn
        # a duplicate: shutting it down ends the connection's socket, and a descriptor number
        # the driver closed and the system gave to another socket meanwhile is never touched
        before = WATCHDOG.attach(self.guard, socket.socket(fileno=os.dup(dbapi_conn.fileno())))
        if before is not None:
            before.close()


def watch(engine: Engine) -> None:
    """A PostgreSQL engine's connections join the use of the thread making or taking them (to be
    set up before any other listener, which may send a statement: the checkout's ping). A new
    one has no socket to watch until it is made: it gets the time left as its connect_timeout,
    2 s at least (libpq's least)."""

    @event.listens_for(engine, "do_connect")
    def _making(_dialect, _record, _cargs, cparams) -> None:
        if (current := getattr(_local, "use", None)) is not None:
            left = current.guard.deadline - time.monotonic()
            if left <= 0:  # a pooled connection's ping used it up: no new one tried
                raise current.no_answer()
            left = max(2, math.ceil(left))
            given = int(float(cparams.get("connect_timeout") or 0))  # 0: none
            cparams["connect_timeout"] = str(min(given, left) if given > 0 else left)

    @event.listens_for(engine, "connect")
    def _made(dbapi_conn, _record) -> None:
        if (current := getattr(_local, "use", None)) is not None:
            current.join(dbapi_conn)

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_conn, _record, _proxy) -> None:
        if (current := getattr(_local, "use", None)) is not None:
            current.join(dbapi_conn)
