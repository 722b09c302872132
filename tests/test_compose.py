"""deploy/docker/compose.yaml and compose.ha.yaml themselves, brought up by podman-compose: the
files an admin runs, with only what this machine cannot give them swapped by an override file
(the images, built here; the addresses of Jira and the directory, the test's)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import ADMIN, JIRA_USER, SECRET, add_users, required, signed, synced, wait_until
from tests.rig import slapd as slapd_rig
from tests.rig.containers import (
    CONTAINERS_CONF,
    HAPROXY_IMAGE,
    IMAGE,
    POSTGRES_IMAGE,
    build_haproxy_image,
    build_image,
    build_postgres_image,
    podman,
    wait_ready,
)
from tests.rig.ports import free_port
from tests.rig.tcp_forward import Forwarder

DOCKER = Path(__file__).resolve().parent.parent / "deploy" / "docker"
TOKEN = "compose-test-pat"  # the compose files sign in to Jira with a personal access token

TEST_ENV = """\
x-test-env: &test-env
  AVATAR_SYNC_JIRA_URL: http://host.containers.internal:{jira_port}
  AVATAR_SYNC_LDAP_URL: ldap://host.containers.internal:{ldap_port}
  AVATAR_SYNC_LDAP_BIND_DN: "{bind_dn}"
  AVATAR_SYNC_LDAP_BASE_DN: "{base_dn}"
  AVATAR_SYNC_LDAP_USER_FILTER: (objectClass=inetOrgPerson)
  AVATAR_SYNC_LDAP_USERNAME_ATTRIBUTE: uid
"""


@dataclass
class Deployment:
    file: str
    front: str  # the service whose port 8080 the test reaches
    serving: tuple[str, ...]  # the services behind it, answering webhooks
    syncers: tuple[str, ...]  # the services that may sync
    others: tuple[str, ...]  # the service's other containers: they start, serve, sync nothing
    override: str  # what the test swaps, under "services:"
    beside: tuple[str, ...] = ()  # files the compose file mounts from its own directory


DEPLOYMENTS = [
    Deployment("compose.yaml", "web", ("web",), ("worker",), ("web",), """\
  web: {{image: {image}, ports: !override ["127.0.0.1:{port}:8080"], environment: *test-env}}
  worker: {{image: {image}, environment: *test-env}}
  postgres: {{image: {postgres_image}}}
"""),
    Deployment("compose.ha.yaml", "haproxy", ("replica-1", "replica-2"), ("replica-1", "replica-2"), (), """\
  replica-1: {{image: {image}, environment: *test-env}}
  replica-2: {{image: {image}, environment: *test-env}}
  upgrade: {{image: {image}, environment: *test-env}}
  haproxy: {{image: {haproxy_image}, ports: !override ["127.0.0.1:{port}:8080"]}}
  postgres: {{image: {postgres_image}}}
""", beside=("haproxy.cfg",)),
]


class Project:
    """A directory like the one an admin runs the file from: the file, ./secrets/, and the
    test's override; podman-compose run in it under a project name of its own."""

    def __init__(self, path: Path, deployment: Deployment):
        self.path, self.deployment = path, deployment
        self.name = f"avsync-compose-{uuid.uuid4().hex[:8]}"
        (path / "secrets").mkdir(parents=True)
        for name in (deployment.file, *deployment.beside):
            shutil.copy(DOCKER / name, path / name)
        (path / "containers.conf").write_text(CONTAINERS_CONF)
        for name, value in {"jira-token": TOKEN, "webhook-secret": SECRET, "admin-token": ADMIN,
                            "ldap-password": slapd_rig.SVC_PW}.items():
            (path / "secrets" / name).write_text(value)
            os.chown(path / "secrets" / name, 10001, 10001)  # the image's user
            (path / "secrets" / name).chmod(0o400)

    def container(self, service: str) -> str:
        return f"{self.name}_{service}_1"

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        tool = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or required("podman-compose")
        env = {**os.environ, "CONTAINERS_CONF": str(self.path / "containers.conf")}
        return subprocess.run([tool, "-p", self.name, "-f", self.deployment.file, "-f", "override.yaml", *args],
                              cwd=self.path, env=env, capture_output=True, text=True, timeout=timeout)

    def logs(self, service: str) -> str:
        return podman("logs", self.container(service), check=False).stderr

    def down(self) -> None:
        containers = podman("ps", "-aq", "--filter", f"name=^{self.name}_", check=False).stdout.split()
        if containers:  # with the image's anonymous volume (down -v removes the named ones)
            podman("rm", "-f", "-v", "-t", "0", *containers, check=False, timeout=120)
        self.compose("down", "-v", "-t", "0")


@pytest.mark.container
@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d.file for d in DEPLOYMENTS])
def test_compose_file_brings_up_a_service_that_syncs_each_login_once(tmp_path, slapd, ldap_ou, jira, deployment):
    """compose.yaml: the web only acknowledging and the worker syncing; compose.ha.yaml: two
    replicas behind HAProxy, each syncing. Both: secrets from files, PostgreSQL by service name,
    read-only roots. A login per user is synced once, by the services that may sync, with the
    state in PostgreSQL; the front answers ready; a stop ends every service of ours cleanly."""
    required("runc")
    build_image(tmp_path)
    build_postgres_image(tmp_path)
    if deployment.front == "haproxy":
        build_haproxy_image(tmp_path)
    names = [f"k{i}" for i in range(12)]
    add_users(slapd, ldap_ou, jira, names)
    with jira.state.lock:
        jira.state.tokens[TOKEN] = JIRA_USER
    project = Project(tmp_path / "project", deployment)
    ours = (*deployment.syncers, *deployment.others)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Forwarder("127.0.0.1", urlsplit(jira.url).port or 80, listen="0.0.0.0") as jira_door, \
            Forwarder("127.0.0.1", slapd.port, listen="0.0.0.0") as ldap_door:
        values = {"image": IMAGE, "postgres_image": POSTGRES_IMAGE, "haproxy_image": HAPROXY_IMAGE, "port": port,
                  "jira_port": jira_door.port, "ldap_port": ldap_door.port, "bind_dn": slapd_rig.SVC_DN,
                  "base_dn": ldap_ou}
        (project.path / "override.yaml").write_text(
            TEST_ENV.format(**values) + "services:\n" + deployment.override.format(**values))
        try:
            up = project.compose("up", "-d")
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
            shown = dict.fromkeys((deployment.front, *ours, "postgres"))
            wait_ready(url, 120, lambda: "\n".join(f"{s}: {project.logs(s)[-1500:]}" for s in shown))

            def logins_reach_every_server() -> bool:  # HAProxy takes a replica in after two checks
                for name in names:  # again and again: a login synced a moment ago is only debounced
                    body = json.dumps({"webhookEvent": "user_login", "user": {"name": name}}).encode()
                    answer = requests.post(url + "/webhooks/jira", data=body, headers=signed(body), timeout=10)
                    assert answer.status_code in (200, 202), answer.text
                return all(_webhooks_answered(project, s) > 0 for s in deployment.serving)
            wait_until(logins_reach_every_server, 60, f"logins to reach {deployment.serving}")
            try:
                wait_until(lambda: all(synced(jira, n) for n in names), 90, "every login to be synced")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {[project.logs(s)[-1500:] for s in ours]}") from None
            assert {n: jira.state.created_for(n) for n in names} == dict.fromkeys(names, 1)
            synced_by = {s: sorted(json.loads(line)["user"] for line in project.logs(s).splitlines()
                                   if line.startswith("{") and '"logger": "app.sync"' in line) for s in ours}
            assert sorted(u for s in deployment.syncers for u in synced_by[s]) == sorted(names), synced_by
            assert all(synced_by[s] == [] for s in deployment.others), synced_by
            checks = json.loads(podman("exec", project.container(ours[0]), "jira-avatar-sync", "check", "--json",
                                       check=False).stdout)["checks"]
            assert {"status": "ok", "check": "state", "detail": "PostgreSQL postgres:5432/avatar_sync as avatar_sync"
                    } in checks, checks
            if deployment.file == "compose.ha.yaml":  # the one-off before a new version's replicas start
                upgrade = project.compose("--profile", "upgrade", "run", "--rm", "upgrade")
                assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr[-3000:]
                assert "PostgreSQL postgres:5432/avatar_sync as avatar_sync: already at" in upgrade.stdout, upgrade
            stopped = project.compose("stop", "-t", "30")
            assert stopped.returncode == 0, stopped.stderr[-3000:]
            codes = {s: json.loads(podman("inspect", project.container(s)).stdout)[0]["State"]["ExitCode"]
                     for s in ours}
            assert codes == dict.fromkeys(ours, 0), (codes, [project.logs(s)[-1500:] for s in ours])
        finally:
            project.down()


def _webhooks_answered(project: Project, service: str) -> float:
    """The webhooks ``service``'s container answered, from its own /metrics (asked inside it)."""
    fetch = ("import urllib.request as u; print(u.urlopen(u.Request('http://127.0.0.1:8080/metrics',"
             f" headers={{'Authorization': 'Bearer {ADMIN}'}}), timeout=10).read().decode())")
    text = podman("exec", project.container(service), "python3", "-c", fetch).stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("jira_avatar_sync_webhook_requests_total{"))
