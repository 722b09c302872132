"""The real console script, pointed at real slapd, real Samba AD and the Jira emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import photos
from tests.helpers import JIRA_PASSWORD, JIRA_USER
from tests.rig import samba as samba_rig
from tests.rig import slapd as slapd_rig
from tests.rig.ports import free_port

SCRIPT = shutil.which("jira-avatar-sync", path=str(Path(sys.executable).parent)) or "jira-avatar-sync"


def run(*args, env=None, config=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    full_env.update(env or {})
    if config:
        full_env["AVATAR_SYNC_CONFIG"] = str(config)
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=full_env, timeout=60)


WEBHOOK_SECRET = "a-webhook-secret-long-enough"


def write_config(
    tmp_path,
    jira_url,
    directories: str,
    extra: str = "",
    password=JIRA_PASSWORD,
    webhook_secret: str | None = WEBHOOK_SECRET,
) -> Path:
    path = tmp_path / "avatar-sync.toml"
    secret = tmp_path / "jira-password"
    secret.write_text(password + "\n")
    webhook = f'[webhook]\nsecret = "{webhook_secret}"' if webhook_secret else ""
    path.write_text(f"""
database_url = "sqlite:///{tmp_path}/state.db"
{extra}
[jira]
url = "{jira_url}"
username = "{JIRA_USER}"
password_file = "{secret}"
max_retries = 1
{directories}
{webhook}
""")
    return path


def slapd_toml(slapd, base_dn, name="openldap"):
    return f"""
[[directories]]
name = "{name}"
urls = ["{slapd.url}"]
bind_dn = "{slapd_rig.SVC_DN}"
bind_password = "{slapd_rig.SVC_PW}"
base_dn = "{base_dn}"
user_filter = "(objectClass=inetOrgPerson)"
username_attribute = "uid"
"""


def samba_toml(base_dn):
    return f"""
[[directories]]
name = "corp-ad"
urls = ["{samba_rig.URL}"]
bind_dn = "{samba_rig.SVC_DN}"
bind_password = "{samba_rig.SVC_PW}"
base_dn = "{base_dn}"
user_filter = "(objectClass=user)"
username_attribute = "sAMAccountName"
photo_attributes = ["thumbnailPhoto"]
"""


def test_sync_prints_the_outcome_and_second_run_writes_nothing(tmp_path, slapd, ldap_ou, jira):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou))
    first = run("sync", "jdoe", config=config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "jdoe: updated"
    writes = jira.state.writes()
    second = run("sync", "jdoe", config=config)
    assert second.stdout.strip() == "jdoe: unchanged" and jira.state.writes() == writes
    dry = run("sync", "jdoe", "--force", "--dry-run", config=config)
    assert dry.stdout.startswith("jdoe: updated") and "[dry run]" in dry.stdout
    assert jira.state.writes() == writes
    assert JIRA_PASSWORD not in first.stderr + second.stderr + dry.stderr


def test_the_worker_logs_every_sync_as_the_service_does(tmp_path, slapd, ldap_ou, jira):
    """A separate `worker` (compose.yaml's, the worker unit's) is a daemon: its syncs' lines are
    its whole log, at log_level, where a one-shot command prints its outcomes itself."""
    from app.queue import LoginQueue
    from app.store import Store

    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou))
    assert run("db", "upgrade", config=config).returncode == 0
    store = Store(f"sqlite:///{tmp_path}/state.db")
    LoginQueue(store).enqueue("jdoe")  # as the web's webhook queues it
    store.dispose()
    result = run("worker", "--once", config=config)
    assert result.returncode == 0, result.stderr
    assert "sync jdoe: updated source=login" in result.stderr and result.stdout == ""


def test_sync_exit_status_is_1_on_failure(tmp_path, slapd, ldap_ou, jira):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou), password="wrong")
    result = run("sync", "jdoe", config=config)
    assert result.returncode == 1
    assert result.stdout.startswith("jdoe: failed (Jira: Jira refused the credentials")
    assert "wrong" not in result.stdout + result.stderr
    nobody = run("sync", "nobody", config=write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou)))
    assert nobody.returncode == 0 and nobody.stdout.strip() == "nobody: not_in_directory"


def test_sync_from_samba_ad_and_openldap_side_by_side(tmp_path, slapd, ldap_ou, samba, ad_ou, jira):
    """AD comes first; a user only in OpenLDAP is still found there."""
    samba.add_user(ad_ou, "aduser", thumbnail_photo=photos.solid(photos.BLUE, 96))
    slapd.add_user(ldap_ou, "aduser", jpeg_photo=photos.solid(photos.RED))  # lower directory: ignored
    slapd.add_user(ldap_ou, "ldapuser", jpeg_photo=photos.solid(photos.GREEN))
    for name in ("aduser", "ldapuser"):
        jira.state.add_user(name)
    config = write_config(tmp_path, jira.url, samba_toml(ad_ou) + slapd_toml(slapd, ldap_ou))
    assert run("sync", "aduser", config=config).stdout.strip() == "aduser: updated"
    assert run("sync", "ldapuser", config=config).stdout.strip() == "ldapuser: updated"
    assert photos.close(photos.dominant(jira.state.selected_avatar("aduser").png), photos.BLUE)
    assert photos.close(photos.dominant(jira.state.selected_avatar("ldapuser").png), photos.GREEN)
    assert jira.state.selected_avatar("aduser").png[:4] == b"\x89PNG"
    assert run("sync", "aduser", config=config).stdout.strip() == "aduser: unchanged"


def test_unreachable_upper_directory_fails_instead_of_falling_through(tmp_path, slapd, ldap_ou, jira):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    dead = f"""
[[directories]]
name = "dead-ad"
urls = ["ldap://127.0.0.1:{free_port()}"]
base_dn = "DC=corp,DC=example"
connect_timeout = 1
"""
    result = run("sync", "jdoe", config=write_config(tmp_path, jira.url, dead + slapd_toml(slapd, ldap_ou)))
    assert result.returncode == 1 and "jdoe: failed (directory dead-ad: no server reachable" in result.stdout
    assert jira.state.writes() == 0


def test_check_passes_and_names_each_check(tmp_path, slapd, ldap_ou, jira):
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou))
    result = run("check", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [ln[:4] for ln in lines if not ln.startswith("warn")] == ["ok  "] * 5
    assert "is a Jira administrator" in result.stdout and "directory openldap: bound" in result.stdout
    assert f"ok   state: SQLite file {tmp_path}/state.db" in lines
    # the test rig's weak spots are named, without failing the check
    assert any(ln.startswith("warn jira.url is plain http") for ln in lines)
    assert any("plain ldap:// without start_tls" in ln for ln in lines)
    assert result.stderr == ""


def test_check_says_who_drains_the_queue(tmp_path, slapd, ldap_ou, jira):
    """A web that only acknowledges needs a worker beside it; a login left waiting for minutes
    says none runs (a warning: the service itself would work)."""
    from datetime import timedelta

    from sqlalchemy import update

    from app.queue import LoginQueue, jobs
    from app.store import Store
    from app.tables import utcnow

    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou), extra="[worker]\nstart_in_web = false")
    quiet = run("check", config=config)
    assert quiet.returncode == 0 and "note worker.start_in_web = false" in quiet.stdout
    assert "warn queue" not in quiet.stdout
    store = Store(f"sqlite:///{tmp_path}/state.db")
    LoginQueue(store).enqueue("jdoe")
    with store.transaction() as conn:  # accepted ten minutes ago, taken by nobody
        conn.execute(update(jobs).values(next_try_at=utcnow() - timedelta(minutes=10)))
    store.dispose()
    waiting = run("check", config=config)
    assert waiting.returncode == 0 and "warn queue: the oldest login has waited 6" in waiting.stdout


def test_check_fails_for_what_would_stop_serve_and_speaks_json(tmp_path, slapd, ldap_ou, jira):
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou), webhook_secret=None)
    result = run("check", config=config)
    assert result.returncode == 1 and "FAIL webhook: webhook.secret: is required" in result.stdout
    as_json = run("check", "--json", config=config)
    body = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and body["ok"] is False
    assert {"status": "fail", "check": "webhook"}.items() <= next(
        c for c in body["checks"] if c["check"] == "webhook"
    ).items()
    assert JIRA_PASSWORD not in as_json.stdout + as_json.stderr


def test_check_warns_when_jira_serves_gravatar(tmp_path, slapd, ldap_ou, jira):
    jira.state.gravatar = True
    result = run("check", config=write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou)))
    assert result.returncode == 0 and "warn Jira serves Gravatar pictures" in result.stdout
    jira.state.gravatar = False
    assert "Gravatar" not in run("check", config=tmp_path / "avatar-sync.toml").stdout


def test_relative_sqlite_path_is_a_configuration_error(tmp_path, slapd, ldap_ou, jira):
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou)).read_text()
    (tmp_path / "c.toml").write_text(config.replace(f"sqlite:///{tmp_path}/state.db", "sqlite:///var/lib/x/state.db"))
    result = run("check", config=tmp_path / "c.toml")
    assert result.returncode == 2 and result.stderr.startswith("configuration error: database_url:")
    assert "relative" in result.stderr and not (Path.cwd() / "var").exists()


def test_each_outcome_is_printed_once_and_expected_failures_have_no_traceback(tmp_path, slapd, ldap_ou, jira):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou))
    quiet = run("sync", "jdoe", config=config)
    assert quiet.stdout == "jdoe: updated\n" and quiet.stderr == ""
    verbose = run("--verbose", "sync", "jdoe", "--force", config=config)
    assert verbose.stdout == "jdoe: updated (forced)\n" and "sync jdoe: updated (forced)" in verbose.stderr
    as_json = json.loads(run("sync", "jdoe", "--json", config=config).stdout)
    assert as_json["outcome"] == "unchanged" and as_json["username"] == "jdoe" and as_json["source"] == "admin"
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("jira-avatar-sync, version ")

    dead_directory = (
        write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou))
        .read_text()
        .replace(slapd.url, f"ldap://127.0.0.1:{free_port()}")
    )
    (tmp_path / "dead.toml").write_text(dead_directory)
    failed_sweep = run("sweep", config=tmp_path / "dead.toml")
    assert failed_sweep.returncode == 1 and "sweep 1: failed: directory openldap" in failed_sweep.stdout
    assert "Traceback" not in failed_sweep.stdout + failed_sweep.stderr

    down = (
        write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou))
        .read_text()
        .replace(f"sqlite:///{tmp_path}/state.db", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    )
    (tmp_path / "down.toml").write_text(down)
    for args in (("sync", "jdoe"), ("sweep",), ("check",)):
        result = run(*args, config=tmp_path / "down.toml")
        assert result.returncode == 1, args
        assert "Traceback" not in result.stdout + result.stderr, args
        assert "127.0.0.1" in result.stdout + result.stderr, args  # says which database


def test_check_fails_on_bad_bind_and_non_admin(tmp_path, slapd, ldap_ou, jira):
    jira.state.add_account("plain", "pw", admin=False)
    toml = slapd_toml(slapd, ldap_ou).replace(slapd_rig.SVC_PW, "wrong-password")
    config = (
        write_config(tmp_path, jira.url, toml).read_text().replace(f'username = "{JIRA_USER}"', 'username = "plain"')
    )
    (tmp_path / "c.toml").write_text(config)
    (tmp_path / "jira-password").write_text("pw")
    result = run("check", config=tmp_path / "c.toml")
    assert result.returncode == 1
    assert (
        "FAIL directory openldap: bind as cn=svc-avatar,dc=example,dc=org refused: invalidCredentials" in result.stdout
    )
    assert "FAIL Jira permission: plain is NOT a Jira administrator" in result.stdout
    assert "wrong-password" not in result.stdout + result.stderr


def test_check_with_a_token_names_the_account_the_webhook_must_ignore(tmp_path, slapd, ldap_ou, jira):
    """The login rule ignores the service's own logins by jira.username, which a token does not need."""
    jira.state.add_account("svc-token", admin=True, token="pat-123")
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou)).read_text()
    config = config.replace(f'username = "{JIRA_USER}"', 'token = "pat-123"').replace(
        "password_file", "# password_file"
    )
    (tmp_path / "c.toml").write_text(config)
    result = run("check", config=tmp_path / "c.toml")
    assert result.returncode == 0, result.stdout + result.stderr  # advice, not a failure
    assert "note jira.username is 'not set': set it to 'svc-token'" in result.stdout
    assert "pat-123" not in result.stdout + result.stderr


def test_configuration_error_exits_2_naming_the_key(tmp_path):
    result = run(
        "sync",
        "jdoe",
        env={
            "AVATAR_SYNC_JIRA_URL": "http://jira",
            "AVATAR_SYNC_JIRA_TOKEN": "t",
            "AVATAR_SYNC_LDAP_URL": "ldap://x",
            "AVATAR_SYNC_LDAP_BASE_DN": "dc=x",
            "AVATAR_SYNC_SIZE": "huge",
        },
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: size: must be a whole number, got 'huge'"


def test_the_command_line_starts_without_the_web_app():
    """A sweep's helpers and every command but serve start without importing Flask (a tenth of
    a second of each process's start on these machines)."""
    code = (
        "import sys, app.cli, app.cli_sweep, app.sweep_helpers; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug') or m == 'app.factory'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_env_only_configuration(tmp_path, slapd, ldap_ou, jira):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    (tmp_path / "ldap-pw").write_text(slapd_rig.SVC_PW)
    env = {
        "AVATAR_SYNC_DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
        "AVATAR_SYNC_JIRA_URL": jira.url,
        "AVATAR_SYNC_JIRA_USERNAME": JIRA_USER,
        "AVATAR_SYNC_JIRA_PASSWORD": JIRA_PASSWORD,
        "AVATAR_SYNC_LDAP_URL": slapd.url,
        "AVATAR_SYNC_LDAP_BIND_DN": slapd_rig.SVC_DN,
        "AVATAR_SYNC_LDAP_BIND_PASSWORD_FILE": str(tmp_path / "ldap-pw"),
        "AVATAR_SYNC_LDAP_BASE_DN": ldap_ou,
        "AVATAR_SYNC_PHOTO_ATTRIBUTES": "jpegPhoto",
    }
    result = run("sync", "jdoe", env=env)
    assert result.stdout.strip() == "jdoe: updated", result.stderr
    disabled = run("sync", "jdoe", env={**env, "AVATAR_SYNC_PHOTO_ATTRIBUTES": ""})
    assert disabled.returncode == 0 and disabled.stdout.startswith("jdoe: disabled")


@pytest.mark.parametrize("emulator_version", ["9.12.0", "11.0.0"])
def test_real_cli_against_the_standalone_emulator(tmp_path, slapd, ldap_ou, emulator_version):
    """`python -m tests.jira_emulator` runs on its own and the real CLI works against it."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.jira_emulator",
            "--port",
            str(port),
            "--version",
            emulator_version,
            "--admin",
            f"{JIRA_USER}:{JIRA_PASSWORD}",
            "--users",
            "jdoe,other",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert "emulator on" in proc.stdout.readline()
        slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
        config = write_config(tmp_path, f"http://127.0.0.1:{port}", slapd_toml(slapd, ldap_ou))
        assert run("sync", "jdoe", config=config).stdout.strip() == "jdoe: updated"
        assert run("sync", "jdoe", config=config).stdout.strip() == "jdoe: unchanged"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_sweep_takes_one_process_per_core_within_the_containers_cpu_quota(tmp_path):
    """The sweep command's default: the cores it may use, fewer under a cgroup quota, never
    more than Jira slots; one where helpers cannot help (a dry run, a database in memory)."""
    import dataclasses

    from app import sweep_helpers
    from tests.helpers import make_settings

    usable = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 cores
    assert sweep_helpers.cores(str(quota)) == min(usable, 2)
    quota.write_text("max 100000\n")
    assert sweep_helpers.cores(str(quota)) == usable
    assert sweep_helpers.cores(str(tmp_path / "none")) == usable
    directory = [{"name": "d", "urls": ["ldap://127.0.0.1:1"], "base_dn": "dc=x"}]
    settings = make_settings(tmp_path, "http://127.0.0.1:1", directory)
    assert sweep_helpers.how_many(settings, 64, dry_run=False) == settings.jira.max_concurrency
    assert sweep_helpers.how_many(settings, 2, dry_run=True) == 1
    assert sweep_helpers.how_many(settings, None, dry_run=False) == min(
        sweep_helpers.cores(), settings.jira.max_concurrency
    )
    assert (
        sweep_helpers.how_many(dataclasses.replace(settings, database_url="sqlite:///:memory:"), 2, dry_run=False) == 1
    )


def test_a_helper_that_cannot_start_leaves_the_sweep_to_the_others(tmp_path, monkeypatch, caplog):
    """No process left to spawn (EAGAIN): the command sweeps with what it has, and says so."""
    import multiprocessing.context

    from app import sweep_helpers
    from tests.helpers import make_settings

    def refuse(self):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refuse)
    directory = [{"name": "d", "urls": ["ldap://127.0.0.1:1"], "base_dn": "dc=x"}]
    settings = make_settings(tmp_path, "http://127.0.0.1:1", directory)
    with caplog.at_level("WARNING", logger="app.sweep_helpers"):
        with sweep_helpers.Helpers(settings, 1, 2, None, "WARNING", False) as helpers:
            helpers.start()
            assert helpers.running == 0
    assert [r.getMessage() for r in caplog.records] == [
        "could not start a sweep helper process: [Errno 11] Resource temporarily unavailable"
    ]


def _hold_two_slots_and_hang(settings, threads, gate, log_level, verbose, held, parent) -> None:
    """A helper's stand-in (spawned: importable by name) that takes two Jira slots as a
    helper's syncs would, and keeps them until it is killed."""
    import time

    from app.shared_slots import CountedGate

    slots = CountedGate(gate, held)
    slots.acquire()
    slots.acquire()
    time.sleep(120)


def test_a_helper_killed_mid_sweep_gives_its_jira_slots_back(tmp_path, monkeypatch, caplog):
    """A semaphore has no owner: a helper killed with -9 (or by the OOM killer) while its
    calls were under way would keep their slots from the rest of the sweep. The command,
    looking at its helpers, gives them back to the shared gate."""
    import dataclasses
    import multiprocessing
    import signal
    import time

    from app import sweep_helpers
    from tests.helpers import make_settings

    directory = [{"name": "d", "urls": ["ldap://127.0.0.1:1"], "base_dn": "dc=x"}]
    settings = make_settings(tmp_path, "http://127.0.0.1:1", directory)
    settings = dataclasses.replace(settings, jira=dataclasses.replace(settings.jira, max_concurrency=3))
    gate = sweep_helpers.Helpers.gate(settings)
    monkeypatch.setattr(sweep_helpers, "_drain", _hold_two_slots_and_hang)
    with caplog.at_level("WARNING", logger="app.sweep_helpers"):
        with sweep_helpers.Helpers(settings, 1, 2, gate, "WARNING", False) as helpers:
            helpers.start()
            deadline = time.monotonic() + 30
            while gate.free() != 1:
                assert time.monotonic() < deadline, "the helper never took its slots"
                time.sleep(0.05)
            assert helpers.reap() == 0  # alive: nothing to give back
            [helper] = [p for p in multiprocessing.active_children() if p.name.startswith("Spawn")]
            os.kill(helper.pid, signal.SIGKILL)
            while helpers.reap() == 0:
                assert time.monotonic() < deadline, "the dead helper was never noticed"
                time.sleep(0.05)
            assert helpers.running == 0 and gate.free() == 3  # both slots back, none extra
    assert [r.getMessage() for r in caplog.records] == [
        f"sweep helper {helper.pid} died (exit code -9), 2 Jira slots it held given back; "
        "its syncs run again in the other processes"
    ]


def test_default_helpers_start_only_once_enough_users_wait(tmp_path, monkeypatch):
    """A small sweep is over before a spawned interpreter has imported the service: by default
    the helpers start once START_FROM users wait; asked for (start_from 0), at once."""
    from app import sweep_helpers
    from tests.helpers import make_settings

    started = []
    monkeypatch.setattr(sweep_helpers.Helpers, "start", lambda self: started.append(self.start_from))
    directory = [{"name": "d", "urls": ["ldap://127.0.0.1:1"], "base_dn": "dc=x"}]
    settings = make_settings(tmp_path, "http://127.0.0.1:1", directory)
    lazy = sweep_helpers.Helpers(settings, 1, 4, None, "WARNING", False, start_from=sweep_helpers.START_FROM)
    assert not lazy.consider(0) and not lazy.consider(sweep_helpers.START_FROM - 1)
    assert lazy.consider(sweep_helpers.START_FROM) is True and started == [sweep_helpers.START_FROM]
    at_once = sweep_helpers.Helpers(settings, 1, 4, None, "WARNING", False, start_from=0)
    assert at_once.consider(0) is True and started == [sweep_helpers.START_FROM, 0]
    assert not sweep_helpers.Helpers(settings, 0, 4, None, "WARNING", False).consider(10_000)  # one process
