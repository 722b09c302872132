"""More processes for `jira-avatar-sync sweep`, so that a sweep uses more than one core.

One Python process syncs on one core at a time (the GIL): on a machine busy with anything else
a sweep's own CPU, not Jira's latency, set its pace (docs/performance.md, "A sweep on more than
one core"). The CLI therefore starts helper processes that drain the same queue beside its own
threads. What stays true with them:

- Jira sees no more than ``jira.max_concurrency`` calls at once, nor more than
  ``max_requests_per_second`` a second, from the whole command: the processes share one
  semaphore and one spacing of call starts (app/shared_slots.py; with ``limits_scope =
  "cluster"`` they already share PostgreSQL's).
- Nothing is lost or done twice: a helper is only another queue worker. Its jobs are leased like
  any worker's; if it dies, the job runs again (a second upload of the same photo is avoided
  by the pending mark, as after any crash).
- No helper outlives the command: each waits on a pipe from the parent. Told to stop, it lets
  its running jobs finish; if the parent dies instead (the pipe's end closes), it gives them a
  few seconds only, since the dead parent's Jira slots never come back to the shared gate.
- A helper that dies mid-sweep (killed, out of memory) does not take Jira slots with it: each
  helper counts the slots it holds where the parent can read them, and the parent, looking at
  its helpers twice a second, gives a dead one's back to the gate (a semaphore has no owner to
  do that for it; app/shared_slots.py), and takes its leased jobs back at once, not when their
  leases lapse.

Helpers are spawned, not forked: the parent already runs threads and holds connections. By
default they start once START_FROM users wait: a smaller sweep is over before they could help.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from . import logs, shared_slots
from .config import Settings

log = logging.getLogger(__name__)
STOP_SECONDS = 40.0  # a helper's running jobs finish (WorkerPool.stop waits up to 30 s)
START_FROM = 200  # users waiting before the command's default helpers start
ORPHANED_STOP_SECONDS = 5.0  # a helper whose parent died: what is not done by then runs again


def how_many(settings: Settings, requested: int | None, dry_run: bool) -> int:
    """The command's processes: what was asked, else one per core this process may use. Never
    more than Jira slots (each process needs one), and one where helpers cannot help: a dry
    run syncs on the runner's own threads, and a database in memory is this process's alone."""
    url = make_url(settings.database_url)
    if dry_run or (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")):
        return 1
    wanted = requested if requested is not None else cores()
    return max(1, min(wanted, settings.jira.max_concurrency))


def cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: those it may run on, fewer where a container's CPU quota
    (cgroup v2 ``cpu.max``, "quota period" or "max period") allows less."""
    usable = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        allowed = -(-int(quota) // int(period))  # "max": no quota (ValueError)
    except (OSError, ValueError):
        return usable
    return max(1, min(usable, allowed))


class Helpers:
    """``count`` helper processes, each with ``threads`` sync threads, sharing ``gate``, started
    by start() or once ``start_from`` users wait (consider()): a small sweep is over before a
    spawned interpreter would have imported the service."""

    def __init__(
        self, settings: Settings, count: int, threads: int, gate, log_level: str, verbose: bool, start_from: int = 0
    ):
        self._context = multiprocessing.get_context("spawn")
        self._args = (settings, threads, gate, log_level, verbose)
        self._gate = gate
        self.count, self.start_from = count, start_from
        self.started = False
        self._helpers: list[_Helper] = []

    @staticmethod
    def gate(settings: Settings):
        """The Jira budget the command's processes share (None: the cluster's budget does it)."""
        return shared_slots.make_gate(settings, multiprocessing.get_context("spawn"))

    def __enter__(self) -> Helpers:
        return self

    def consider(self, waiting: int) -> bool:
        """Start the helpers if ``waiting`` users (the sweep's, not yet done) are enough; True
        when that happened now."""
        if self.started or not self.count or waiting < self.start_from:
            return False
        self.start()
        return True

    @property
    def running(self) -> int:
        return len(self._helpers)

    def start(self) -> None:
        self.started = True
        for _ in range(self.count):
            reader, writer = self._context.Pipe(duplex=False)
            held = shared_slots.make_count(self._context)
            process = self._context.Process(target=_drain, args=(*self._args, held, reader), daemon=True)
            try:
                process.start()
            except OSError as exc:  # no memory, no processes left: the sweep goes on with fewer
                log.warning("could not start a sweep helper process: %s", exc)
                writer.close()
                break
            finally:
                reader.close()  # the helper's alone: its end closing is how the helper learns we died
            self._helpers.append(_Helper(process, writer, held))

    def reap(self) -> int:
        """Give the Jira slots of each helper that died since the last look back to the shared
        gate, and forget that helper (the sweep goes on with the others). Returns how many died.
        (With the cluster's budget the slots are PostgreSQL's: they went with its connections.)"""
        died = [helper for helper in self._helpers if helper.process.exitcode is not None]
        for helper in died:
            self._helpers.remove(helper)
            helper.pipe.close()
            held = shared_slots.give_back(self._gate, helper.held) if self._gate is not None else 0
            log.warning(
                "sweep helper %d died (exit code %s)%s; its syncs run again in the other processes",
                helper.process.pid,
                helper.process.exitcode,
                f", {held} Jira slots it held given back" if self._gate is not None else "",
            )
        return len(died)

    def __exit__(self, *exc) -> None:
        for helper in self._helpers:
            try:
                helper.pipe.send("stop")
            except OSError:  # that helper is gone already
                pass
            helper.pipe.close()
        for process in (helper.process for helper in self._helpers):
            process.join(STOP_SECONDS)
            if process.is_alive():  # its jobs' leases lapse and they run again
                log.warning("sweep helper %d did not stop in %gs: killed", process.pid, STOP_SECONDS)
                process.kill()
                process.join(5)


@dataclass(frozen=True)
class _Helper:
    process: multiprocessing.process.BaseProcess
    pipe: Connection  # the parent's end: "stop", or its closing when the parent dies
    held: Any  # the Jira slots the helper holds, a shared int (CountedGate counts them)


def _drain(settings: Settings, threads: int, gate, log_level: str, verbose: bool, held, parent: Connection) -> None:
    """A helper: sync threads on the queue until the parent says stop, or dies."""
    from .services import build_services
    from .worker import WorkerPool

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it cancels, then stops us

    def stop_on_sigterm(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    logs.setup(log_level, settings.log_format)
    if not verbose:
        logs.quiet_syncs()
    services = build_services(settings, jira_gate=shared_slots.CountedGate(gate, held) if gate is not None else None)
    pool = WorkerPool(services, threads, settings.worker.poll_seconds).start()
    told = False  # else the parent died (or SIGTERM came): its slots may never come back
    try:
        parent.recv()  # "stop"; end of file when the parent died
        told = True
    except EOFError:
        log.warning("the sweep command died: this helper stops")
    finally:
        if told:
            pool.stop()  # the running jobs finish, as in any worker
        else:
            pool.stop(ORPHANED_STOP_SECONDS)
        services.close()
