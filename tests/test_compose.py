"""deploy/docker/compose.yaml itself, brought up by podman-compose: the file an admin runs,
with only what this machine cannot give it swapped by an override file (the images, built
here; the addresses of Jira and the directory, the test's)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import ADMIN, JIRA_USER, SECRET, add_users, signed, synced, wait_until
from tests.rig import slapd as slapd_rig
from tests.rig.containers import (
    CONTAINERS_CONF,
    IMAGE,
    POSTGRES_IMAGE,
    build_image,
    build_postgres_image,
    podman,
    required,
    wait_ready,
)
from tests.rig.ports import free_port
from tests.rig.tcp_forward import Forwarder

COMPOSE = Path(__file__).resolve().parent.parent / "deploy" / "docker" / "compose.yaml"
TOKEN = "compose-test-pat"  # compose.yaml signs in to Jira with a personal access token

OVERRIDE = """\
services:
  web:
    image: {image}
    ports: !override ["127.0.0.1:{port}:8080"]
    environment: &test-env
      AVATAR_SYNC_JIRA_URL: http://host.containers.internal:{jira_port}
      AVATAR_SYNC_LDAP_URL: ldap://host.containers.internal:{ldap_port}
      AVATAR_SYNC_LDAP_BIND_DN: "{bind_dn}"
      AVATAR_SYNC_LDAP_BASE_DN: "{base_dn}"
      AVATAR_SYNC_LDAP_USER_FILTER: (objectClass=inetOrgPerson)
      AVATAR_SYNC_LDAP_USERNAME_ATTRIBUTE: uid
  worker:
    image: {image}
    environment: *test-env
  postgres:
    image: {postgres_image}
"""


def _compose(project: Path, run_id: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    tool = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or required("podman-compose")
    env = {**os.environ, "CONTAINERS_CONF": str(project / "containers.conf")}
    return subprocess.run([tool, "-p", run_id, "-f", "compose.yaml", "-f", "override.yaml", *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _logs(container: str) -> str:
    return podman("logs", container, check=False).stderr[-3000:]


@pytest.mark.container
def test_compose_file_brings_up_web_worker_and_postgres_that_sync_each_login_once(tmp_path, slapd, ldap_ou, jira):
    """Its secrets from files, PostgreSQL by service name, the web only acknowledging, the
    worker syncing, read-only roots: a login per user synced once, by the worker, with the
    state in PostgreSQL; the web ready; a stop ends both cleanly."""
    required("runc")
    build_image(tmp_path)
    build_postgres_image(tmp_path)
    names = [f"k{i}" for i in range(8)]
    add_users(slapd, ldap_ou, jira, names)
    with jira.state.lock:
        jira.state.tokens[TOKEN] = JIRA_USER
    project = tmp_path / "project"
    (project / "secrets").mkdir(parents=True)
    shutil.copy(COMPOSE, project / "compose.yaml")
    (project / "containers.conf").write_text(CONTAINERS_CONF)
    for name, value in {"jira-token": TOKEN, "webhook-secret": SECRET, "admin-token": ADMIN,
                        "ldap-password": slapd_rig.SVC_PW}.items():
        (project / "secrets" / name).write_text(value)
        os.chown(project / "secrets" / name, 10001, 10001)  # the image's user
        (project / "secrets" / name).chmod(0o400)
    run_id = f"avsync-compose-{uuid.uuid4().hex[:8]}"
    web, worker, postgres = (f"{run_id}_{s}_1" for s in ("web", "worker", "postgres"))
    port, url = free_port(), ""
    with Forwarder("127.0.0.1", urlsplit(jira.url).port or 80, listen="0.0.0.0") as jira_door, \
            Forwarder("127.0.0.1", slapd.port, listen="0.0.0.0") as ldap_door:
        (project / "override.yaml").write_text(OVERRIDE.format(
            image=IMAGE, postgres_image=POSTGRES_IMAGE, port=port, jira_port=jira_door.port,
            ldap_port=ldap_door.port, bind_dn=slapd_rig.SVC_DN, base_dn=ldap_ou))
        url = f"http://127.0.0.1:{port}"
        try:
            up = _compose(project, run_id, "up", "-d")
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
            wait_ready(url, 120, lambda: f"web: {_logs(web)}\npostgres: {_logs(postgres)}")
            for name in names:
                body = json.dumps({"webhookEvent": "user_login", "user": {"name": name}}).encode()
                answer = requests.post(url + "/webhooks/jira", data=body, headers=signed(body), timeout=10)
                assert answer.status_code in (200, 202), answer.text
            try:
                wait_until(lambda: all(synced(jira, n) for n in names), 90, "every login to be synced")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: worker: {_logs(worker)}") from None
            assert {n: jira.state.created_for(n) for n in names} == dict.fromkeys(names, 1)
            synced_by = {c: [json.loads(line)["user"] for line in _logs(c).splitlines()
                             if line.startswith("{") and '"logger": "app.sync"' in line] for c in (web, worker)}
            assert synced_by == {web: [], worker: synced_by[worker]} and sorted(synced_by[worker]) == names
            checks = json.loads(podman("exec", web, "jira-avatar-sync", "check", "--json").stdout)["checks"]
            assert {"status": "ok", "check": "state", "detail": "PostgreSQL postgres:5432/avatar_sync as avatar_sync"
                    } in checks, checks
            stopped = _compose(project, run_id, "stop", "-t", "30")
            assert stopped.returncode == 0, stopped.stderr[-3000:]
            codes = {c: json.loads(podman("inspect", c).stdout)[0]["State"]["ExitCode"] for c in (web, worker)}
            assert codes == {web: 0, worker: 0}, (codes, _logs(worker))
        finally:  # the image's anonymous volume too (down -v removes the named ones)
            podman("rm", "-f", "-v", "-t", "0", web, worker, postgres, check=False, timeout=120)
            _compose(project, run_id, "down", "-v", "-t", "0")
