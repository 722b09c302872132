"""The command line's full sweep: started here, drained by this process and its helpers
(app/sweep_helpers.py), followed with a progress line, summed up at the end. Registered on
app/cli.py's ``main``."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

from . import sweep_helpers
from .cli import _log_level, _print_json, _services, _settings, main
from .outcomes import SweepStatus
from .sweep import SweepConflict
from .worker import WorkerPool, sweep_threads


@main.command()
@click.option("--dry-run", is_flag=True, help="Report what a real sweep would do; write nothing to Jira.")
@click.option("--full", is_flag=True, help="Ignore change markers: read every user's photo again.")
@click.option("--json", "as_json", is_flag=True, help="The summary and every problem as JSON.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Processes that sync (default: one per CPU core, at most jira.max_concurrency); "
    "together they keep to jira.max_concurrency and max_requests_per_second.",
)
@click.pass_context
def sweep(ctx: click.Context, dry_run: bool, full: bool, as_json: bool, processes: int | None) -> None:
    """Sync every directory user now, with a progress bar and a summary at the end."""
    requested, settings = processes, _settings(ctx)
    processes = sweep_helpers.how_many(settings, requested, dry_run)
    gate = sweep_helpers.Helpers.gate(settings) if processes > 1 else None  # the processes' Jira budget
    services = _services(ctx, settings, gate)
    sweeps = services.sweeps
    try:
        sweep_id = sweeps.start(dry_run=dry_run, full=full, trigger="cli")
    except SweepConflict as exc:
        resumed = _resume(sweeps, dry_run, full, exc)
        if resumed is None:
            ctx.exit(1)
        sweep_id = resumed
    # This process (and its helpers) drain the queue too, so the sweep finishes with or without
    # the service; sweep_threads says how many threads, split between the processes.
    threads = -(-sweep_threads(settings) // processes)
    # asked for: at once; by default only once enough users wait for a helper to be worth its start
    start_from = 0 if requested else sweep_helpers.START_FROM
    helpers = sweep_helpers.Helpers(
        settings, processes - 1, threads, gate, _log_level(ctx, settings), ctx.obj["verbose"], start_from
    )

    def consider(summary: dict | None) -> None:
        if helpers.reap():  # a helper died: its Jira slots are back, and its leased jobs come back now
            services.queue.release_dead_leases()  # (not when their leases lapse, minutes on)
        if helpers.consider(summary["total"] - summary["done"] if summary else 0):
            click.echo(
                ("\n" if sys.stderr.isatty() else "")
                + f"sweep {sweep_id}: {1 + helpers.running} processes, {threads} sync threads each",
                err=True,
            )

    with _Signals().installed() as signals, helpers:
        consider(None)  # asked for: at once
        # the pool's threads take the sweep over (unless the service has it) and run it; stopped,
        # the pool lets go of it for the service or the next command to resume
        pool = WorkerPool(services, threads, settings.worker.poll_seconds).start()
        try:
            summary = _follow(sweeps, sweep_id, consider, signals)
        except KeyboardInterrupt:  # Ctrl-C: the admin's own "stop this sweep"
            sweeps.cancel(sweep_id)
            click.echo("\ncancelled", err=True)
            summary = sweeps.summary(sweep_id) or {"id": sweep_id, "status": "cancelled"}
        except _Terminated:  # a service manager stopping the command: the sweep is not given up
            click.echo(
                f"\nstopped (SIGTERM): the running syncs finish; sweep {sweep_id} goes on in the service, "
                "or with the next `jira-avatar-sync sweep`",
                err=True,
            )
            summary = None
        finally:
            pool.stop()
        summary = summary or sweeps.summary(sweep_id) or {"id": sweep_id, "status": "running"}
    if summary["status"] == SweepStatus.CANCELLED:  # what the stopping threads and helpers gave back
        services.queue.cancel_sweep(sweep_id)
    if as_json:
        _print_json({**summary, "problems": sweeps.problems(sweep_id)})
    else:
        _print_summary(summary, sweeps.problems(sweep_id, limit=20))
    ctx.exit(0 if summary["status"] == SweepStatus.FINISHED else 1)


class _Terminated(Exception):
    pass


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM (systemd stopping a timer's unit, a container's end) are
    noted here, and _follow acts on them at its next look at the sweep: an exception raised from
    the handler itself could land inside a lock's acquire (the store's writer lock) and leave the
    lock held for the cancel or the stop that follows. A second Ctrl-C interrupts at once, as
    usual."""

    def __init__(self) -> None:
        self.received: str | None = None  # "SIGINT" or "SIGTERM"

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT:
            if self.received == "SIGINT":
                raise KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one interrupts
        self.received = self.received or signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator[_Signals]:
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _resume(sweeps, dry_run: bool, full: bool, conflict: SweepConflict) -> int | None:
    """The sweep a stopped command (killed, its machine rebooted) left running, to be resumed
    here when it is the kind asked for: without a service, nothing else would ever finish it,
    and every later sweep would be refused. None, said why, when there is nothing to resume."""
    left = sweeps.running(lapsed=True) if conflict.running is not None else None
    if left is None or left["id"] != conflict.running:
        click.echo(f"cannot start a sweep: {conflict}", err=True)
        return None
    kind = "a dry run" if left["dry_run"] else "a full sweep" if left["full"] else "a sweep"
    if left["dry_run"] != dry_run or (full and not left["full"]):
        flags = " --dry-run" if left["dry_run"] else " --full" if left["full"] else ""
        click.echo(
            f"cannot start a sweep: sweep {left['id']}, {kind}, was left unfinished by a process that stopped; "
            f"resume it with `jira-avatar-sync sweep{flags}`, or cancel it (POST /admin/sweeps/{left['id']}/cancel)",
            err=True,
        )
        return None
    click.echo(
        f"resuming sweep {left['id']} ({kind}, started {left['started_at']}), left unfinished by a process that "
        f"stopped: {left['done']} users done",
        err=True,
    )
    return left["id"]


def _follow(sweeps, sweep_id: int, on_summary, signals: _Signals) -> dict:
    tty = sys.stderr.isatty()
    last_line = 0.0
    while True:
        if signals.received == "SIGINT":
            raise KeyboardInterrupt
        if signals.received == "SIGTERM":
            raise _Terminated()
        ended = sweeps.runs_ended  # read before the summary: an end after it cuts the wait below short
        summary = sweeps.summary(sweep_id)
        on_summary(summary)
        line = (
            f"sweep {sweep_id} [{summary['phase']}] {summary['done']}/{summary['total']} users"
            f", {summary['rate_per_second']}/s"
            + (f", about {summary['eta_seconds']}s left" if summary["eta_seconds"] is not None else "")
        )
        if summary["status"] != SweepStatus.RUNNING:
            click.echo(("\r" if tty else "") + line.ljust(78), err=True)
            return summary
        if tty:
            width = 30
            filled = int(width * summary["done"] / summary["total"]) if summary["total"] else 0
            click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] " + line, nl=False, err=True)
        elif time.monotonic() - last_line > 10:
            click.echo(line, err=True)
            last_line = time.monotonic()
        sweeps.wait_for_run_end(ended, 0.5)  # this process's pool usually runs it


def _print_summary(summary: dict, problems: list[dict]) -> None:
    click.echo(
        f"sweep {summary['id']}: {summary['status']}"
        + (" (dry run)" if summary["dry_run"] else "")
        + (f": {summary['error']}" if summary["error"] else "")
    )
    click.echo(f"{'outcome':<18}{'users':>8}")
    for outcome, n in summary["counts"].items():
        click.echo(f"{outcome:<18}{n:>8}")
    click.echo(f"{'total':<18}{summary['total']:>8}")
    if problems:
        click.echo(f"\nproblems (first 20; all: GET /admin/sweeps/{summary['id']}/problems.csv):")
        for p in problems:
            click.echo(f"  {p['username']}: {p['outcome']}" + (f" ({p['reason']})" if p["reason"] else ""))
