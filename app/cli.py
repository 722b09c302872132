"""jira-avatar-sync command line: thin doors onto the services.

Exit status: 0 when the work was done or there was nothing to do, 1 when a sync failed or a
check did not pass, 2 for a configuration error.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import click

from .config import ConfigError, load_settings
from .directory import DirectoryUnavailable
from .jira import JiraError
from .services import Services, build_services
from .sync import FAILED


def _services(ctx: click.Context) -> Services:
    if "services" not in ctx.obj:
        try:
            settings = load_settings(ctx.obj["config"])
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            ctx.exit(2)
        logging.basicConfig(level=ctx.obj["log_level"] or settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        ctx.obj["services"] = build_services(settings)
        ctx.call_on_close(ctx.obj["services"].close)
    return ctx.obj["services"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", envvar="AVATAR_SYNC_CONFIG", type=click.Path(dir_okay=False),
              help="TOML configuration file (default: $AVATAR_SYNC_CONFIG).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Override log_level for this command.")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None) -> None:
    """Keep Jira profile pictures in step with LDAP / Active Directory photos."""
    ctx.ensure_object(dict)
    ctx.obj.update(config=config, log_level=log_level and log_level.upper())


@main.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the configuration, every directory bind, and Jira access and permission."""
    services = _services(ctx)
    settings = services.settings
    failures = 0

    def line(ok: bool, text: str) -> None:
        nonlocal failures
        failures += not ok
        click.echo(f"{'ok  ' if ok else 'FAIL'} {text}")

    line(True, f"configuration: {len(settings.directories)} directories, photo attributes "
               f"{', '.join(settings.photo_attributes) or '(none: sync disabled)'}, size {settings.size}px")
    for directory in services.directories:
        try:
            directory.check()
            line(True, f"directory {directory.name}: bound as {directory.settings.bind_dn or 'anonymous'}")
        except DirectoryUnavailable as exc:
            line(False, str(exc))
    try:
        me = services.jira.myself()
        line(True, f"Jira {settings.jira.url}: authenticated as {me.get('name')}")
        own = me.get("name") or ""
        if own and settings.jira.username.casefold() != own.casefold():  # rule 9 goes by this name
            click.echo(f"note jira.username is {settings.jira.username or 'not set'!r}: set it to {own!r} "
                       "(the account this token signs in as), so the webhook ignores that account's own logins")
        admin = services.jira.is_admin()
        line(admin, f"Jira permission: {me.get('name')} "
                    + ("is a Jira administrator" if admin else
                       "is NOT a Jira administrator (needed to set other users' avatars)"))
    except JiraError as exc:
        line(False, f"Jira {settings.jira.url}: {exc}")
    try:
        services.store.ping()
        line(True, f"database: {services.store.engine.url.render_as_string(hide_password=True)}")
    except Exception as exc:  # noqa: BLE001 - any driver error is a failed check
        line(False, f"database: {type(exc).__name__}: {exc}")
    ctx.exit(1 if failures else 0)


@main.command()
@click.argument("username")
@click.option("--force", is_flag=True, help="Upload again even when nothing changed.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.pass_context
def sync(ctx: click.Context, username: str, force: bool, dry_run: bool) -> None:
    """Sync one user's picture now and print the outcome."""
    result = _services(ctx).syncer.sync_user(username, force=force, dry_run=dry_run)
    click.echo(result.line() + (" [dry run]" if dry_run else ""))
    ctx.exit(1 if result.outcome == FAILED else 0)


@main.command()
@click.option("--dry-run", is_flag=True, help="Report what a real sweep would do; write nothing to Jira.")
@click.option("--full", is_flag=True, help="Ignore change markers: read every user's photo again.")
@click.pass_context
def sweep(ctx: click.Context, dry_run: bool, full: bool) -> None:
    """Sync every directory user now, with a progress bar and a summary at the end."""
    from .sweep import SweepConflict, Sweeps
    from .worker import WorkerPool

    services = _services(ctx)
    sweeps = Sweeps(services)
    try:
        sweep_id = sweeps.start(dry_run=dry_run, full=full, trigger="cli")
    except SweepConflict as exc:
        click.echo(f"cannot start a sweep: {exc}", err=True)
        ctx.exit(1)
    # This process drains the queue too, so the sweep finishes with or without the service.
    # Twice as many threads as Jira slots: a sync spends part of its time off Jira (directory,
    # decode, database), and the client's gate still holds calls in flight to max_concurrency.
    threads = max(services.settings.worker.threads, 2 * services.settings.jira.max_concurrency)
    pool = WorkerPool(services, threads, services.settings.worker.poll_seconds).start()
    runner = None
    if sweeps.take_over() == sweep_id:
        runner = threading.Thread(target=sweeps.run, args=(sweep_id,), daemon=True)
        runner.start()
    try:
        summary = _follow(sweeps, sweep_id, runner)
    except KeyboardInterrupt:
        sweeps.cancel(sweep_id)
        click.echo("\ncancelled", err=True)
        summary = sweeps.summary(sweep_id)
    finally:
        if runner:
            runner.join(10)
        pool.stop()
    _print_summary(summary, sweeps.problems(sweep_id, limit=20))
    ctx.exit(0 if summary["status"] == "finished" else 1)


def _follow(sweeps, sweep_id: int, runner: threading.Thread | None) -> dict:
    tty = sys.stderr.isatty()
    last_line = 0.0
    while True:
        summary = sweeps.summary(sweep_id)
        line = (f"sweep {sweep_id} [{summary['phase']}] {summary['done']}/{summary['total']} users"
                f", {summary['rate_per_second']}/s"
                + (f", about {summary['eta_seconds']}s left" if summary["eta_seconds"] is not None else ""))
        if summary["status"] != "running":
            click.echo(("\r" if tty else "") + line.ljust(78), err=True)
            return summary
        if tty:
            width = 30
            filled = int(width * summary["done"] / summary["total"]) if summary["total"] else 0
            click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] " + line, nl=False, err=True)
        elif time.monotonic() - last_line > 10:
            click.echo(line, err=True)
            last_line = time.monotonic()
        if runner is not None and runner.is_alive():
            runner.join(0.5)  # the summary comes the moment this process's runner ends the sweep
        else:
            time.sleep(0.5)


def _print_summary(summary: dict, problems: list[dict]) -> None:
    click.echo(f"sweep {summary['id']}: {summary['status']}"
               + (" (dry run)" if summary["dry_run"] else "") + (f": {summary['error']}" if summary["error"] else ""))
    click.echo(f"{'outcome':<18}{'users':>8}")
    for outcome, n in summary["counts"].items():
        click.echo(f"{outcome:<18}{n:>8}")
    click.echo(f"{'total':<18}{summary['total']:>8}")
    if problems:
        click.echo("\nproblems (first 20; all: GET /admin/sweeps/%d/problems.csv):" % summary["id"])
        for p in problems:
            click.echo(f"  {p['username']}: {p['outcome']}" + (f" ({p['reason']})" if p["reason"] else ""))


@main.command()
@click.option("--threads", type=int, help="Worker threads (default: worker.threads).")
@click.option("--once", is_flag=True, help="Process what is due, then exit.")
@click.pass_context
def worker(ctx: click.Context, threads: int | None, once: bool) -> None:
    """Drain the login queue in this process (instead of, or beside, the web workers)."""
    from .worker import WorkerPool

    services = _services(ctx)
    w = services.settings.worker
    pool = WorkerPool(services, threads if threads is not None else max(1, w.threads), w.poll_seconds)
    if once:
        while pool.run_once():
            pass
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pool.start()
    click.echo(f"worker: {pool.threads} threads draining the queue; SIGTERM to stop", err=True)
    stop.wait()
    pool.stop()


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--bind", default=None, help="Address to listen on (default 127.0.0.1:8080 or $AVATAR_SYNC_BIND).")
@click.pass_context
def serve(ctx: click.Context, bind: str | None) -> None:
    """Run the web service under gunicorn (extra arguments go to gunicorn)."""
    from . import require_webhook_auth

    try:  # fail here with one line rather than in every gunicorn worker
        require_webhook_auth(_services(ctx).settings)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        ctx.exit(2)
    args = [sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf"]
    if bind:
        args += ["--bind", bind]
    if ctx.obj["config"]:
        os.environ["AVATAR_SYNC_CONFIG"] = ctx.obj["config"]
    os.execv(sys.executable, args + list(ctx.args) + ["app:create_app()"])


if __name__ == "__main__":
    main()
