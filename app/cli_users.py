"""The command line's doors onto one user: sync them now, opt them out (or back in), and
render the picture the next sync would upload. Registered on app/cli.py's ``main``."""

from __future__ import annotations

from pathlib import Path

import click

from . import job_run, usernames
from .cli import _print_json, _services, main
from .directory import DirectoryUnavailable
from .outcomes import FAILED
from .sync_result import NoPreview


def _user(username: str) -> str:
    refused = usernames.problem(username)
    if refused:
        raise click.BadParameter(refused, param_hint="USER")
    return username


@main.command()
@click.argument("username")
@click.option("--force", is_flag=True, help="Upload again even when nothing changed.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="The outcome as JSON.")
@click.pass_context
def sync(ctx: click.Context, username: str, force: bool, dry_run: bool, as_json: bool) -> None:
    """Sync one user's picture now and print the outcome."""
    result = job_run.sync_now(_services(ctx), _user(username), force=force, dry_run=dry_run)
    if as_json:
        _print_json(result.as_dict())
    else:
        click.echo(result.line() + (" [dry run]" if dry_run else ""))
    ctx.exit(1 if result.outcome == FAILED else 0)


@main.command()
@click.argument("username")
@click.option(
    "--on/--off", "excluded", default=None, help="Opt the user out (they keep their own picture), or back in."
)
@click.option("--json", "as_json", is_flag=True, help="The answer as JSON.")
@click.pass_context
def exclusion(ctx: click.Context, username: str, excluded: bool | None, as_json: bool) -> None:
    """Show whether USER is excluded (and why); --on / --off sets an admin's opt-out."""
    services, username = _services(ctx), _user(username)
    if excluded is not None:
        services.store.set_excluded(username, excluded)
    described = services.exclusions.describe(username, services.store.get(username))
    if as_json:
        _print_json({"username": username, "exclusion": described})
    else:
        why = described["reason"]
        click.echo(f"{usernames.loggable(username)}: " + (f"excluded ({why})" if why else "not excluded"))


@main.command()
@click.argument("username")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), required=True, help="Where to write the PNG."
)
@click.pass_context
def preview(ctx: click.Context, username: str, output: str) -> None:
    """Write the picture the next sync would upload for USER as a PNG; nothing else is written."""
    try:
        png = _services(ctx).syncer.preview(_user(username))
    except (NoPreview, DirectoryUnavailable) as exc:
        click.echo(f"{usernames.loggable(username)}: no preview: {exc}", err=True)
        ctx.exit(1)
    Path(output).write_bytes(png)
    click.echo(f"{usernames.loggable(username)}: {len(png)} bytes written to {output}")
