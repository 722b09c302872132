"""jira-avatar-sync command line: thin doors onto the services.

Exit status: 0 when the work was done or there was nothing to do, 1 when a sync failed or a
check did not pass, 2 for a configuration error.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import click
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, logs
from .config import ConfigError, Settings, load_settings
from .database import describe_error, describe_location
from .directory import DirectoryUnavailable
from .jira import JiraError
from .schema import SchemaMismatch
from .services import Services, build_services
from .weak_settings import require_webhook_auth, weak_settings
from .worker import WorkerPool, sweep_threads


def _settings(ctx: click.Context) -> Settings:
    """The configuration, read once; the log set up by it."""
    if "settings" not in ctx.obj:
        try:
            settings = load_settings(ctx.obj["config"])
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            ctx.exit(2)
        verbose = ctx.obj["verbose"]
        logs.setup(_log_level(ctx, settings), settings.log_format)
        if not verbose:
            logs.quiet_syncs()
        ctx.obj["settings"] = settings
    return ctx.obj["settings"]


LOGIN_WAIT_WARNING_SECONDS = 300  # as the AvatarSyncLoginsNotPickedUp alert


def _log_level(ctx: click.Context, settings: Settings) -> str:
    return ctx.obj["log_level"] or (settings.log_level if ctx.obj["verbose"] else "WARNING")


def _services(ctx: click.Context, settings: Settings | None = None, jira_gate=None) -> Services:
    """The services, built once (``settings``: adjusted ones, ``jira_gate``: see build_services)."""
    if "services" not in ctx.obj:
        ctx.obj["services"] = build_services(settings or _settings(ctx), jira_gate)
        ctx.call_on_close(ctx.obj["services"].close)
    return ctx.obj["services"]


class _Commands(click.Group):
    """Expected failures end with one line and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SchemaMismatch as exc:
            click.echo(f"cannot go on: {exc}", err=True)
            ctx.exit(2)
        except SQLAlchemyError as exc:
            services = ctx.obj.get("services")
            where = describe_location(services.settings.database_url) if services else "the state"
            click.echo(f"cannot use {where}: {describe_error(exc)}", err=True)
            ctx.exit(1)


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jira-avatar-sync")
@click.option(
    "--config",
    "config",
    envvar="AVATAR_SYNC_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $AVATAR_SYNC_CONFIG).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Override log_level for this command.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every sync on stderr too (as the service does).")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None, verbose: bool) -> None:
    """Keep Jira profile pictures in step with LDAP / Active Directory photos."""
    ctx.ensure_object(dict)
    ctx.obj.update(config=config, log_level=log_level and log_level.upper(), verbose=verbose)


class _Report:
    """check's findings: ok and FAIL lines (a FAIL means `serve` would not work), warnings, notes."""

    def __init__(self):
        self.items: list[dict] = []

    def add(self, status: str, name: str, text: str) -> None:
        self.items.append({"status": status, "check": name, "detail": text})

    @property
    def failed(self) -> bool:
        return any(i["status"] == "fail" for i in self.items)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Check everything `serve` needs: configuration, every directory bind, Jira access and
    permission, the state database. Exit 1 when anything would stop the service."""
    services = _services(ctx)
    settings = services.settings
    report = _Report()
    report.add(
        "ok",
        "configuration",
        f"{len(settings.directories)} directories, photo attributes "
        f"{', '.join(settings.photo_attributes) or '(none: sync disabled)'}, size {settings.size}px",
    )
    try:
        require_webhook_auth(settings)
    except ConfigError as exc:
        report.add("fail", "webhook", str(exc).removeprefix("configuration error: "))
    for warning in weak_settings(settings):
        report.add("warn", "security", warning)
    _check_directories(services, report)
    _check_photo_server(services, report)
    _check_jira(services, report)
    _check_exclude_groups(services, report)
    where = describe_location(settings.database_url)
    try:
        services.store.check_writable()
        report.add("ok", "state", where)
        _check_queue(services, report)
    except SQLAlchemyError as exc:
        report.add("fail", "state", f"{where}: {describe_error(exc)}")
    except Exception as exc:  # noqa: BLE001 - a read-only standby, a locked file...
        report.add("fail", "state", f"{where}: {exc}")
    if as_json:
        _print_json({"ok": not report.failed, "version": __version__, "checks": report.items})
    else:
        for item in report.items:
            click.echo(
                f"{ {'ok': 'ok  ', 'fail': 'FAIL', 'warn': 'warn', 'note': 'note'}[item['status']] } "
                + (item["detail"] if item["check"] in ("security", "note") else f"{item['check']}: {item['detail']}")
            )
    ctx.exit(1 if report.failed else 0)


def _check_directories(services: Services, report: _Report) -> None:
    for directory in services.directories:
        try:
            directory.check()
            bind_dn = getattr(getattr(directory, "settings", None), "bind_dn", "")
            report.add("ok", f"directory {directory.name}", f"bound as {bind_dn or 'anonymous'}")
        except DirectoryUnavailable as exc:
            report.add("fail", f"directory {directory.name}", exc.reason)


def _check_photo_server(services: Services, report: _Report) -> None:
    http = services.syncer.photos.http
    if http is None:
        return
    try:  # a name no one has: 404 (or a photo) says the server answers and takes the credentials
        http.fetch("jira-avatar-sync-check", conditional=False, remember=False)
        report.add("ok", "photo server", f"{http.url_for('<username>')} answers")
    except DirectoryUnavailable as exc:
        report.add("fail", "photo server", exc.reason)


def _check_queue(services: Services, report: _Report) -> None:
    """Who drains the queue: a web that only acknowledges needs a worker beside it, and a
    login left waiting minutes says that none runs."""
    if not services.settings.worker.start_in_web:
        report.add(
            "note",
            "note",
            "worker.start_in_web = false: the web only acknowledges logins; run `jira-avatar-sync worker` beside it",
        )
    waited = services.queue.login_wait()
    if waited > LOGIN_WAIT_WARNING_SECONDS:
        report.add("warn", "queue", f"the oldest login has waited {waited:.0f} s and no worker has taken it")


def _check_exclude_groups(services: Services, report: _Report) -> None:
    groups = services.settings.exclude_groups
    if not groups:
        return
    try:
        members, missing = services.exclusions.read_groups()
    except JiraError as exc:
        report.add("fail", "exclude_groups", f"cannot read them: {exc}")
        return
    if missing:  # nobody of those is excluded: worth fixing, not worth refusing to start
        report.add("warn", "exclude_groups", f"Jira has no group {', '.join(map(repr, missing))}")
    report.add("ok", "exclude_groups", f"{len(members)} users excluded by {len(groups) - len(missing)} groups")


def _check_jira(services: Services, report: _Report) -> None:
    settings = services.settings
    try:
        me = services.jira.myself()
    except JiraError as exc:
        report.add("fail", f"Jira {settings.jira.url}", str(exc))
        return
    own = me.get("name") or ""
    report.add("ok", f"Jira {settings.jira.url}", f"authenticated as {own}")
    if own and settings.jira.username.casefold() != own.casefold():  # logins of this account are ignored
        report.add(
            "note",
            "note",
            f"jira.username is {settings.jira.username or 'not set'!r}: set it to {own!r} "
            "(the account this token signs in as), so the webhook ignores that account's own logins",
        )
    try:
        admin = services.jira.is_admin()
        report.add(
            "ok" if admin else "fail",
            "Jira permission",
            f"{own} "
            + (
                "is a Jira administrator"
                if admin
                else "is NOT a Jira administrator (needed to set other users' avatars)"
            ),
        )
        if services.jira.serves_gravatar():
            report.add(
                "warn",
                "security",
                "Jira serves Gravatar pictures (Administration > General configuration "
                "> Use Gravatar for user avatars): uploaded avatars stay invisible until that is off",
            )
    except JiraError as exc:
        report.add("fail", "Jira permission", str(exc))


@main.command()
@click.option("--threads", type=int, help="Worker threads (default: worker.threads).")
@click.option("--once", is_flag=True, help="Process what is due, then exit.")
@click.pass_context
def worker(ctx: click.Context, threads: int | None, once: bool) -> None:
    """Drain the login queue in this process (instead of, or beside, the web workers)."""
    ctx.obj["verbose"] = True  # a daemon: its syncs' lines are its log, at log_level, as the service's
    services = _services(ctx)
    _require_schema(ctx)
    w = services.settings.worker
    threads = threads if threads is not None else max(1, w.threads)
    pool = WorkerPool(services, threads, w.poll_seconds, sweep_threads(services.settings))
    if once:
        while pool.run_once():
            pass
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pool.start()
    click.echo(
        f"worker: {pool.threads} threads draining the queue, up to {pool.sweep_threads} while a sweep runs; "
        "SIGTERM to stop",
        err=True,
    )
    stop.wait()
    pool.stop()


@main.group()
def db() -> None:
    """The state database's schema (Alembic revisions)."""


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the database's schema revision, and the one this version needs."""
    store = _services(ctx).store
    click.echo(f"{describe_location(store.url)}: {store.describe_schema()}")


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Bring the database's schema to this version's (safe to run again; replicas of the
    previous version keep running through an additive revision: README, High availability)."""
    store = _services(ctx).store
    before, after = store.upgrade_schema()
    where = describe_location(store.url)
    click.echo(f"{where}: {before or 'unversioned'} -> {after}" if before != after else f"{where}: already at {after}")


def _require_schema(ctx: click.Context) -> None:
    """serve and worker: one line and exit 2 when the schema is not this version's."""
    try:
        _services(ctx).store.ping()  # the first use checks the schema (and creates an empty one)
    except SchemaMismatch as exc:
        click.echo(f"cannot start: {exc}", err=True)
        ctx.exit(2)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--bind", default=None, help="Address to listen on (default 127.0.0.1:8080 or $AVATAR_SYNC_BIND).")
@click.pass_context
def serve(ctx: click.Context, bind: str | None) -> None:
    """Run the web service under gunicorn (extra arguments go to gunicorn)."""
    try:  # fail here with one line rather than in every gunicorn worker
        require_webhook_auth(_services(ctx).settings)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        ctx.exit(2)
    _require_schema(ctx)  # an empty database is created here, before the workers fork
    _services(ctx).store.dispose()
    args = [sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf"]
    if bind:
        args += ["--bind", bind]
    if ctx.obj["config"]:
        os.environ["AVATAR_SYNC_CONFIG"] = ctx.obj["config"]
    os.environ.setdefault("AVATAR_SYNC_LOG_FORMAT", _services(ctx).settings.log_format)  # gunicorn's own lines
    os.execv(sys.executable, args + list(ctx.args) + ["app:create_app()"])


# the commands about one user (sync, exclusion, preview) and the sweep register themselves on `main`
from . import cli_sweep, cli_users  # noqa: E402,F401

if __name__ == "__main__":  # python -m app.cli: the commands registered themselves on app.cli's main
    from app.cli import main as registered

    registered()
