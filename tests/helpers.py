"""Helpers shared by test modules (fixtures alone live in conftest.py)."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
import requests
import sqlalchemy
from sqlalchemy.engine import make_url

from app import sweep_run
from app.config import settings_from_dict
from app.worker import WorkerPool
from tests import photos
from tests.rig import samba as samba_rig
from tests.rig.children import DIE_WITH_PARENT
from tests.rig.ports import free_port
from tests.rig.service_config import slapd_section, write_service_config

ROOT = Path(__file__).resolve().parent.parent
SECRET, ADMIN = "gunicorn-hook-secret", "gunicorn-admin-token"
JIRA_USER, JIRA_PASSWORD = "svc-jira", "jira-secret"  # the emulator's service account
PG_URL = os.environ.get("AVATAR_SYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def pg_schema(prefix: str = "avsync") -> Iterator[str]:
    """A throw-away schema in the local PostgreSQL, dropped afterwards: the URL of a database
    that holds nothing of any other run or test."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"), pool_pre_ping=True)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
        admin.dispose()


@contextmanager
def pg_database(prefix: str = "avsync", options: str = "") -> Iterator[str]:
    """A throw-away database in the local PostgreSQL (``options``: CREATE DATABASE's own), dropped
    afterwards with whatever is still connected: for what a schema cannot give (a pooler in
    front, which passes no search_path on; another encoding)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"),
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} {options}")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def unavailable(what: str) -> NoReturn:
    """A server or tool the test needs is missing: skipped locally, a failure under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (.ci/run installs it)")
    pytest.skip(f"{what} not installed")


def required(tool: str) -> str:
    """The path of a command-line tool a test needs (unavailable() when it is missing)."""
    return shutil.which(tool) or unavailable(tool)


def slapd_directory(slapd, base_dn, **extra) -> dict:
    defaults: dict[str, Any] = {"user_filter": "(objectClass=inetOrgPerson)", "username_attribute": "uid",
                                "timeout": 5, "connect_timeout": 2}
    return slapd_section(slapd.url, base_dn, **(defaults | extra))


def samba_directory(base_dn, **extra) -> dict:
    return {"name": "corp-ad", "urls": [samba_rig.URL], "bind_dn": samba_rig.SVC_DN,
            "bind_password": samba_rig.SVC_PW, "base_dn": base_dn,
            "user_filter": "(objectClass=user)", "username_attribute": "sAMAccountName",
            "timeout": 5, "connect_timeout": 2, **extra}


def make_settings(tmp_path, jira_url, directories, **extra):
    return settings_from_dict({
        "database_url": f"sqlite:///{tmp_path}/state.db",
        "jira": {"url": jira_url, "username": JIRA_USER, "password": JIRA_PASSWORD, "max_retries": 2},
        "directories": directories, **extra})



class Service:
    """The real service under gunicorn (deploy/gunicorn.conf.py, 2 workers) on a loopback port,
    pointed at a real slapd and the Jira emulator."""

    def __init__(self, tmp_path: Path, slapd, base_dn: str, jira_url: str, database_url: str | None = None,
                 name: str = "", env: dict | None = None, workers: int = 2):
        """``database_url``: default a SQLite file in ``tmp_path``; ``name``: a replica's, for
        its own log and config beside the others'; ``env``: AVATAR_SYNC_* settings on top."""
        self.env, self.workers = env or {}, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"{name}gunicorn.log"
        self.config = tmp_path / f"{name}service.toml"
        write_service_config(
            self.config, database_url=database_url or f"sqlite:///{tmp_path}/state.db",
            photo_attributes=["jpegPhoto"],
            jira={"url": jira_url, "username": JIRA_USER, "password": JIRA_PASSWORD, "max_retries": 1, "timeout": 5},
            webhook={"secret": SECRET}, admin={"token": ADMIN},
            worker={"threads": 4, "poll_seconds": 0.2, "lease_seconds": 5, "max_attempts": 100,
                    "retry_base_seconds": 0.5, "retry_max_seconds": 3},
            directories=[slapd_section(slapd.url, base_dn)])
        self.proc: subprocess.Popen | None = None
        self.http = requests.Session()

    @property
    def pid(self) -> int:
        """The running process's id (gunicorn's master)."""
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
        env["AVATAR_SYNC_CONFIG"] = str(self.config)
        env.update(self.env)
        self.proc = subprocess.Popen(
            [*DIE_WITH_PARENT, sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "--bind",
             f"127.0.0.1:{self.port}", "--workers", str(self.workers), "app:create_app()"],
            cwd=ROOT, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # still booting
                time.sleep(0.1)
        raise AssertionError("gunicorn did not come up:\n" + self.log.read_text()[-3000:])

    def kill9(self) -> None:
        assert self.proc is not None, "not started"
        os.killpg(self.proc.pid, signal.SIGKILL)  # master and every worker, no goodbye
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def login(self, name: str, signature: str | None = None, session=None,
              base: str | None = None, timeout: float = 10) -> requests.Response:
        """A signed user_login webhook for ``name``, to this service (or to ``base``: a load balancer)."""
        body = json.dumps({"webhookEvent": "user_login", "timestamp": int(time.time() * 1000),
                           "user": {"name": name}}).encode()
        digest = signature or "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return (session or requests).post((base or self.url) + "/webhooks/jira", data=body, timeout=timeout,
                                          headers={"Content-Type": "application/json", "X-Hub-Signature": digest})

    def user(self, name: str) -> requests.Response:
        return self.http.get(f"{self.url}/admin/users/{name}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)


def add_users(slapd, ou, jira, names):
    for name in names:
        slapd.add_user(ou, name, jpeg_photo=photos.photo(120, 100))
        jira.state.add_user(name)


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def module_clock(monkeypatch, module: str, start: float = 1000.0) -> list[float]:
    """A clock for ``module``'s ``time.monotonic`` alone, moved by hand (``clock[0] += s``).
    Patching time.monotonic itself moves every thread's clock, the deadline watchdog's too,
    which then sleeps out the difference long after the test and lets later deadlines pass."""
    clock = [start]
    monkeypatch.setattr(f"{module}.time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    return clock


def synced(jira, name) -> bool:
    return jira.state.selected_avatar(name).owner is not None




def signed(body: bytes, secret: str = SECRET) -> dict:
    """Headers of a webhook signed as Jira DC 10+ signs it."""
    return {"Content-Type": "application/json",
            "X-Hub-Signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def run_sweep(services, threads: int = 2, **start) -> dict:
    """A whole sweep in this process, queue workers included (``start``: dry_run, full); its
    summary."""
    sweep_id = services.sweeps.start(**start)
    assert sweep_run.take_over(services) == sweep_id
    pool = WorkerPool(services, threads=threads, poll_seconds=0.05).start()
    try:
        sweep_run.run(services, sweep_id)
    finally:
        pool.stop()
    return services.sweeps.summary(sweep_id)
