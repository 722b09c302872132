"""What an admin deploys: the systemd units, the alert rules and Grafana dashboard, the example
configuration, the environment file, the configuration reference and the container image."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest
import requests

from app import create_app
from app.config_keys import ENV_KEYS, ENV_PREFIX, KEYS, SECRETS
from tests.helpers import JIRA_PASSWORD, JIRA_USER, make_settings, required, slapd_directory
from tests.rig import slapd as slapd_rig
from tests.rig.containers import IMAGE, RUN, SANDBOX, build_image, podman, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCRIPT = Path(sys.executable).parent / "jira-avatar-sync"
# gunicorn's own variables (app/gunicorn_conf.py), beside the configuration's
GUNICORN_ENV = {"AVATAR_SYNC_BIND", "AVATAR_SYNC_WEB_WORKERS", "AVATAR_SYNC_WEB_THREADS",
                "AVATAR_SYNC_ACCESS_LOG", "AVATAR_SYNC_GUNICORN_LOG_LEVEL", "AVATAR_SYNC_GUNICORN_CONTROL_SOCKET",
                "AVATAR_SYNC_CONFIG"}


def all_keys() -> set[str]:
    return {f"{table}.{key}".lstrip(".") for table, keys in KEYS.items() for key in keys}


# -- systemd -------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["jira-avatar-sync.service", "jira-avatar-sync-worker.service"])
def test_systemd_units_are_hardened(unit):
    tool = required("systemd-analyze")
    result = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(DEPLOY / "systemd" / unit)],
                            capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert exposure, result.stdout[-2000:] + result.stderr
    assert float(exposure.group(1)) <= 2.0, result.stdout[-3000:]


def test_units_match_what_the_readme_installs():
    readme = (ROOT / "README.md").read_text()
    for name in ("jira-avatar-sync.sysusers.conf", "jira-avatar-sync.tmpfiles.conf", "jira-avatar-sync.service"):
        assert f"deploy/systemd/{name}" in readme
    unit = (DEPLOY / "systemd" / "jira-avatar-sync.service").read_text()
    assert "EnvironmentFile=/etc/jira-avatar-sync/env" in unit and "User=jira-avatar-sync" in unit
    tmpfiles = (DEPLOY / "systemd" / "jira-avatar-sync.tmpfiles.conf").read_text()
    assert re.search(r"^d /var/lib/jira-avatar-sync 0700 jira-avatar-sync", tmpfiles, re.M)


# -- Prometheus and Grafana ------------------------------------------------------------------

def test_alert_rules_pass_promtool():
    tool = required("promtool")
    result = subprocess.run([tool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_their_unit_tests_say():
    """deploy/prometheus/alerts.test.yml: promtool feeds the rules the series of an incident."""
    tool = required("promtool")
    result = subprocess.run([tool, "test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_and_grafana_name_only_metrics_the_service_exposes(tmp_path, slapd, ldap_ou, jira):
    settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)], webhook={"secret": "s" * 20})
    app = create_app(settings)
    exposed = app.test_client().get("/metrics").get_data(as_text=True)
    # a histogram or counter is listed by its family name (# TYPE) even before its first event
    families = set(re.findall(r"^# TYPE (jira_avatar_sync_\w+) (\w+)", exposed, re.M))
    names = {name for name, _ in families}
    names |= {f"{n}{suffix}" for n, kind in families if kind == "histogram" for suffix in ("_bucket", "_sum", "_count")}
    names |= {f"{n}_total" for n, kind in families if kind == "counter"}
    app.extensions["avatar_sync"].close()
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    grafana = json.loads((DEPLOY / "grafana" / "jira-avatar-sync.json").read_text())
    expressions = [t["expr"] for p in grafana["panels"] for t in p["targets"]]
    used = set(re.findall(r"jira_avatar_sync_\w+", alerts + "\n".join(expressions)))
    assert used and used <= names, sorted(used - names)
    for metric in ("jira_avatar_sync_syncs_total", "jira_avatar_sync_webhook_requests_total",
                   "jira_avatar_sync_jira_requests_total", "jira_avatar_sync_ldap_errors_total",
                   "jira_avatar_sync_sync_duration_seconds_bucket", "jira_avatar_sync_build_info",
                   "jira_avatar_sync_dependency_up", "jira_avatar_sync_queue_jobs"):
        assert metric in names


# -- configuration --------------------------------------------------------------------------

def _readme_reference() -> tuple[set[str], set[str]]:
    """(keys, environment names) of the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| key (TOML) | environment |"):]
    table = table[:table.index("\n\n")]
    keys, envs = set(), set()
    for row in table.splitlines()[2:]:
        cells = row.split("|")
        keys |= set(re.findall(r"`([a-z_.]+)`", cells[1]))
        envs |= set(re.findall(r"`(AVATAR_SYNC_[A-Z_]+)`", cells[2]))
    return keys, envs


def test_readme_reference_lists_every_key_and_every_environment_name():
    keys, envs = _readme_reference()
    assert keys == all_keys()
    assert envs == {ENV_PREFIX + suffix for suffix in ENV_KEYS}
    # every key can be set from the environment
    from_env = {f"{table[0] if table else ''}.{key}".lstrip(".") for table, key in ENV_KEYS.values()}
    assert from_env == all_keys()
    assert all(f"{ENV_PREFIX}{s}" in envs for s in ENV_KEYS if s.endswith("PASSWORD") or s.endswith("SECRET"))
    assert {"jira.password", "directories.bind_password"} <= SECRETS


def _example_keys(text: str) -> set[str]:
    """Keys the example shows, commented out or not, by the table they stand in."""
    found, table = set(), ""
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[\[?(\w+)\]\]?", line)
        if header:
            table = header.group(1)
            continue
        key = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if key:
            name = f"{table}.{key.group(1)}".lstrip(".")
            found.add(name.removesuffix("_file") if name.removesuffix("_file") in SECRETS else name)
    return found


def test_example_configuration_shows_every_key_and_check_accepts_it(tmp_path, slapd, ldap_ou, jira):
    text = (DEPLOY / "config.example.toml").read_text()
    assert _example_keys(text) == all_keys()
    secrets = {}
    for name, value in (("jira-password", JIRA_PASSWORD), ("webhook-secret", "w" * 32),
                        ("admin-token", "a" * 32), ("ldap-password", slapd_rig.SVC_PW)):
        secrets[name] = tmp_path / name
        secrets[name].write_text(value)
    # the example as shipped, pointed at this test's servers; nothing else changed
    local = (text.replace("/var/lib/jira-avatar-sync/state.db", f"{tmp_path}/state.db")
             .replace('"https://jira.example.com"', f'"{jira.url}"')
             .replace('username = "avatar-sync"', f'username = "{JIRA_USER}"')
             .replace('["ldaps://dc1.corp.example", "ldaps://dc2.corp.example"]', f'["{slapd.url}"]')
             .replace('"CN=svc-avatar,OU=Service,DC=corp,DC=example"', f'"{slapd_rig.SVC_DN}"')
             .replace('"DC=corp,DC=example"', f'"{ldap_ou}"')
             .replace('"(objectClass=user)"', '"(objectClass=inetOrgPerson)"')
             .replace('"sAMAccountName"', '"uid"'))
    for name, path in secrets.items():
        local = local.replace(f"/etc/jira-avatar-sync/{name}", str(path))
    config = tmp_path / "config.toml"
    config.write_text(local)
    assert tomllib.loads(local)  # still TOML
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_SYNC_")}
    result = subprocess.run([str(SCRIPT), "--config", str(config), "check"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_env_example_works_as_shipped():
    lines = [ln for ln in (DEPLOY / "env.example").read_text().splitlines() if ln and not ln.startswith("#")]
    env = dict(ln.split("=", 1) for ln in lines)
    known = {ENV_PREFIX + s for s in ENV_KEYS} | GUNICORN_ENV
    assert set(env) <= known, set(env) - known
    # the configuration file it names is the one the README's steps create
    readme = (ROOT / "README.md").read_text()
    assert env["AVATAR_SYNC_CONFIG"] == "/etc/jira-avatar-sync/config.toml"
    assert "deploy/config.example.toml /etc/jira-avatar-sync/config.toml" in readme
    assert (env["AVATAR_SYNC_WEB_WORKERS"], env["AVATAR_SYNC_WEB_THREADS"]) == ("2", "2")  # as benchmarked


@pytest.mark.parametrize("name", ["compose.yaml", "compose.ha.yaml"])
def test_compose_file_names_only_known_variables(name):
    compose = (DEPLOY / "docker" / name).read_text()
    names = set(re.findall(r"\b(AVATAR_SYNC_[A-Z_]+?)(?:_FILE)?:", compose))
    known = {ENV_PREFIX + s for s in ENV_KEYS} | GUNICORN_ENV
    assert names and names <= known, names - known
    assert "dockerfile: deploy/docker/Dockerfile" in compose


def test_haproxy_examples_pass_haproxy_check(tmp_path):
    """deploy/haproxy/haproxy.cfg.example (with a certificate made here) and the one
    compose.ha.yaml mounts are valid for the HAProxy the replica tests run."""
    haproxy = required("haproxy")
    slapd_rig.make_certificates(tmp_path / "tls")
    pem = tmp_path / "avatar-sync.pem"
    pem.write_text((tmp_path / "tls" / "server.pem").read_text() + (tmp_path / "tls" / "server.key").read_text())
    example = (DEPLOY / "haproxy" / "haproxy.cfg.example").read_text().replace("/etc/haproxy/avatar-sync.pem", str(pem))
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in (DEPLOY / "docker" / "compose.ha.yaml").read_text()
    mounted = (DEPLOY / "docker" / "haproxy.cfg").read_text()
    # the replicas' names resolve only on the compose network
    mounted = re.sub(r"server (replica-\d) replica-\d:", r"server \1 127.0.0.1:", mounted)
    for name, text in (("example", example), ("compose", mounted)):
        config = tmp_path / f"{name}.cfg"
        config.write_text(text + "\n")
        checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, (name, checked.stdout + checked.stderr)


# -- the container image --------------------------------------------------------------------

@pytest.mark.container
def test_container_image_builds_and_runs_as_a_non_root_user(tmp_path):
    """Its command run in a build step on top of it: what the image holds, without starting
    a container (test_the_containers_of_a_pod_serve_and_sync starts them)."""
    build_image(tmp_path)
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = info["Config"]
    assert config["User"] == "jira-avatar-sync" and config["Entrypoint"] == ["jira-avatar-sync"]
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"]) and "8080/tcp" in config["ExposedPorts"]
    probe = tmp_path / "Containerfile"
    probe.write_text(f"FROM {IMAGE}\n"
                     "RUN id -un > /tmp/who && jira-avatar-sync --version > /tmp/version"
                     " && python3 -c 'import app.factory, psycopg' && cat /tmp/who /tmp/version\n")
    tag = f"localhost/jira-avatar-sync-probe:{uuid.uuid4().hex[:8]}"
    try:
        result = podman("build", "--isolation=chroot", "--no-cache", "-t", tag, "-f", str(probe), str(tmp_path))
    finally:
        podman("rmi", "-f", tag, check=False)  # not left behind by every run
    assert "jira-avatar-sync\n" in result.stdout and "jira-avatar-sync, version" in result.stdout


HOST = "10.0.2.2"  # the host's loopback, seen from a container on slirp4netns:allow_host_loopback


@pytest.mark.container
@pytest.mark.parametrize("web_syncs", [False, True], ids=["web-acknowledges", "web-syncs-too"])
def test_the_containers_of_a_pod_serve_and_sync(tmp_path, slapd, ldap_ou, jira, web_syncs):
    """compose.yaml's two services, started from the image as a pod would run them: `serve` and
    `worker`, one volume for the SQLite state, one network and one host name, PIDs of their own;
    read-only, no capabilities, secrets in files. Logins reach the web container, and each user
    is synced once: by the worker container where the web one only acknowledges (compose.yaml),
    by both where the web one syncs too, neither taking the other's PIDs for its own (their
    workers look for dead processes' leases every two seconds while the syncs hold theirs). The
    image's HEALTHCHECK passes; a stop ends both cleanly."""
    from tests.helpers import ADMIN, SECRET, add_users, signed, synced, wait_until
    from tests.rig.ports import free_port

    compose = (DEPLOY / "docker" / "compose.yaml").read_text()
    hardening = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    for option in ("read_only: true", "tmpfs: [/tmp]", "cap_drop: [ALL]", '"no-new-privileges:true"',
                   "AVATAR_SYNC_WORKER_START_IN_WEB", 'command: ["worker"]'):
        assert option in compose, option  # the options given below are compose.yaml's
    required("runc")
    build_image(tmp_path)
    names = [f"c{i}" for i in range(24 if web_syncs else 12)]
    add_users(slapd, ldap_ou, jira, names)
    jira.state.latency = 0.3 if web_syncs else 0.05  # seconds of syncs: leases held while the others look
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in {"jira-password": JIRA_PASSWORD, "webhook-secret": SECRET, "admin-token": ADMIN,
                        "ldap-password": slapd_rig.SVC_PW}.items():
        (secrets / name).write_text(value)
        os.chown(secrets / name, 10001, 10001)  # the image's user
        (secrets / name).chmod(0o400)
    env = {
        "AVATAR_SYNC_JIRA_URL": jira.url.replace("127.0.0.1", HOST),
        "AVATAR_SYNC_JIRA_USERNAME": JIRA_USER,
        "AVATAR_SYNC_JIRA_PASSWORD_FILE": "/run/secrets/jira-password",
        "AVATAR_SYNC_WEBHOOK_SECRET_FILE": "/run/secrets/webhook-secret",
        "AVATAR_SYNC_ADMIN_TOKEN_FILE": "/run/secrets/admin-token",
        "AVATAR_SYNC_LDAP_URL": slapd.url.replace("127.0.0.1", HOST),
        "AVATAR_SYNC_LDAP_BIND_DN": slapd_rig.SVC_DN,
        "AVATAR_SYNC_LDAP_BIND_PASSWORD_FILE": "/run/secrets/ldap-password",
        "AVATAR_SYNC_LDAP_BASE_DN": ldap_ou,
        "AVATAR_SYNC_LDAP_USER_FILTER": "(objectClass=inetOrgPerson)",
        "AVATAR_SYNC_LDAP_USERNAME_ATTRIBUTE": "uid",
        "AVATAR_SYNC_LOG_FORMAT": "json",
    }
    run_id = f"avatar-sync-test-{uuid.uuid4().hex[:8]}"  # containers and volume of this run alone
    common = [*SANDBOX, *hardening, "-v", f"{run_id}-state:/var/lib/jira-avatar-sync",
              *(a for f in secrets.iterdir() for a in ("-v", f"{f}:/run/secrets/{f.name}:ro")),
              *(a for k, v in env.items() for a in ("-e", f"{k}={v}"))]
    web, worker, port = f"{run_id}-web", f"{run_id}-worker", free_port()
    url = f"http://127.0.0.1:{port}"
    inside = 9090 if web_syncs else 8080  # a deployment may bind another port: the HEALTHCHECK follows it
    try:
        podman(*RUN, "run", "-d", "--name", web, "--hostname", "avatar-sync-pod",
               "--network", "slirp4netns:allow_host_loopback=true", "-p", f"127.0.0.1:{port}:{inside}",
               *common, "-e", f"AVATAR_SYNC_WORKER_START_IN_WEB={str(web_syncs).lower()}",
               "-e", f"AVATAR_SYNC_BIND=0.0.0.0:{inside}", IMAGE, "serve", timeout=120)
        wait_ready(url, 60, lambda: podman("logs", web, check=False).stderr[-3000:])
        podman(*RUN, "run", "-d", "--name", worker, "--network", f"container:{web}", "--uts", f"container:{web}",
               *common, IMAGE, "worker", timeout=120)
        for name in names:
            body = json.dumps({"webhookEvent": "user_login", "user": {"name": name}}).encode()
            for _ in range(3):  # a burst: one job per user
                answer = requests.post(url + "/webhooks/jira", data=body, headers=signed(body), timeout=10)
                assert answer.status_code in (200, 202), answer.text
        wait_until(lambda: all(synced(jira, n) for n in names), 90, "every login to be synced")
        time.sleep(3)  # a job wrongly freed would be synced again by now
        assert {n: jira.state.created_for(n) for n in names} == dict.fromkeys(names, 1)  # once each
        synced_by = {c: [json.loads(line) for line in podman("logs", c).stderr.splitlines()
                        if line.startswith("{") and '"logger": "app.sync"' in line] for c in (web, worker)}
        if not web_syncs:
            assert synced_by[web] == []  # the web container only acknowledges (WORKER_START_IN_WEB=false)
        assert sorted(e["user"] for e in synced_by[web] + synced_by[worker]) == sorted(names)  # a line each
        assert synced_by[worker], "the worker container synced nobody"
        user = requests.get(f"{url}/admin/users/{names[0]}", headers={"Authorization": f"Bearer {ADMIN}"},
                            timeout=10).json()
        assert user["state"]["last_outcome"] == "updated", user
        hostnames = {podman("exec", c, "python3", "-c", "import socket; print(socket.gethostname())").stdout
                     for c in (web, worker)}
        assert hostnames == {"avatar-sync-pod\n"}  # one host name, as in a pod
        assert podman(*RUN, "healthcheck", "run", web, check=False).returncode == 0  # the image's HEALTHCHECK
        podman(*RUN, "stop", "-t", "30", worker, web, timeout=120)
        codes = [json.loads(podman("inspect", c).stdout)[0]["State"]["ExitCode"] for c in (web, worker)]
        assert codes == [0, 0], (codes, podman("logs", worker, check=False).stderr[-2000:])
    finally:
        podman(*RUN, "rm", "-f", "-t", "0", worker, web, check=False, timeout=120)
        podman("volume", "rm", "-f", f"{run_id}-state", check=False)


@pytest.mark.parametrize("bench", sorted(p.stem for p in (ROOT / "tests" / "bench").glob("*.py")
                                         if p.stem != "__init__"))
def test_every_benchmark_is_still_a_command(bench):
    """Benchmarks run on demand, never in CI: this at least keeps each one a command with its
    options (one lost its `if __name__ == "__main__"` once, and printed nothing for a session)."""
    import ast
    tree = ast.parse((ROOT / "tests" / "bench" / f"{bench}.py").read_text())
    guards = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) in (
        "__name__ == '__main__'", '__name__ == "__main__"')]
    assert guards and "main()" in ast.unparse(guards[-1]), f"{bench} runs nothing when started with python -m"
    assert "argparse" in (ROOT / "tests" / "bench" / f"{bench}.py").read_text()  # --help says its options
