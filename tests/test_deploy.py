"""What an admin deploys: the systemd units, the alert rules and Grafana dashboard, the example
configuration, the environment file, the configuration reference and the container image."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from app import create_app
from app.config_keys import ENV_KEYS, ENV_PREFIX, KEYS, SECRETS
from tests.helpers import JIRA_PASSWORD, JIRA_USER, make_settings, slapd_directory
from tests.rig import slapd as slapd_rig

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCRIPT = Path(sys.executable).parent / "jira-avatar-sync"
# gunicorn's own variables (app/gunicorn_conf.py), beside the configuration's
GUNICORN_ENV = {"AVATAR_SYNC_BIND", "AVATAR_SYNC_WEB_WORKERS", "AVATAR_SYNC_WEB_THREADS",
                "AVATAR_SYNC_ACCESS_LOG", "AVATAR_SYNC_GUNICORN_LOG_LEVEL", "AVATAR_SYNC_CONFIG"}


def _required(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI (.ci/run installs it)")
        pytest.skip(f"{tool} not installed")
    return path


def all_keys() -> set[str]:
    return {f"{table}.{key}".lstrip(".") for table, keys in KEYS.items() for key in keys}


# -- systemd -------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["jira-avatar-sync.service", "jira-avatar-sync-worker.service"])
def test_systemd_units_are_hardened(unit):
    tool = _required("systemd-analyze")
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
    tool = _required("promtool")
    result = subprocess.run([tool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
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
    """deploy/haproxy/haproxy.cfg.example (with a certificate made here) and the one inside
    compose.ha.yaml are valid for the HAProxy the replica tests run."""
    haproxy = _required("haproxy")
    slapd_rig.make_certificates(tmp_path / "tls")
    pem = tmp_path / "avatar-sync.pem"
    pem.write_text((tmp_path / "tls" / "server.pem").read_text() + (tmp_path / "tls" / "server.key").read_text())
    example = (DEPLOY / "haproxy" / "haproxy.cfg.example").read_text().replace("/etc/haproxy/avatar-sync.pem", str(pem))
    compose = (DEPLOY / "docker" / "compose.ha.yaml").read_text()
    embedded = "\n".join(line[6:] for line in compose.split("content: |\n", 1)[1].splitlines()
                         if line.startswith("      ") or not line.strip()).split("\n\n")[0]
    embedded = re.sub(r"server (replica-\d) replica-\d:", r"server \1 127.0.0.1:", embedded)
    for name, text in (("example", example), ("compose", embedded)):
        config = tmp_path / f"{name}.cfg"
        config.write_text(text + "\n")
        checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, (name, checked.stdout + checked.stderr)


# -- the container image --------------------------------------------------------------------

BASE_IMAGE = "localhost/jira-avatar-sync-test-base:bookworm"


def _podman(*args, timeout=900, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.container
def test_container_image_builds_and_runs_as_a_non_root_user(tmp_path):
    """No registry is reachable here, so the base is a Debian 12 made with debootstrap, and
    containers cannot be started (the sandbox refuses crun's rlimits and cgroups): the image is
    built with chroot isolation and its command is run in a build step on top of it."""
    _required("podman")
    if _podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        debootstrap = _required("debootstrap")
        rootfs = tmp_path / "rootfs"
        subprocess.run([debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                       check=True, capture_output=True, timeout=900)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True,
                       capture_output=True, timeout=300)
        tar.wait()
    # the machine's own CA bundle and pip settings: its way to PyPI goes through them
    mounts = [arg for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf") if Path(path).exists()
              for arg in ("-v", f"{path}:{path}:ro")]
    _podman("build", "--isolation=chroot", "--format", "docker", *mounts, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "-f", str(DEPLOY / "docker" / "Dockerfile"), "-t", "localhost/jira-avatar-sync:test", str(ROOT))
    info = json.loads(_podman("image", "inspect", "localhost/jira-avatar-sync:test").stdout)[0]
    config = info["Config"]
    assert config["User"] == "jira-avatar-sync" and config["Entrypoint"] == ["jira-avatar-sync"]
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"]) and "8080/tcp" in config["ExposedPorts"]
    probe = tmp_path / "Containerfile"
    probe.write_text("FROM localhost/jira-avatar-sync:test\n"
                     "RUN id -un > /tmp/who && jira-avatar-sync --version > /tmp/version"
                     " && python3 -c 'import app.factory, psycopg' && cat /tmp/who /tmp/version\n")
    result = _podman("build", "--isolation=chroot", "--no-cache", "-f", str(probe), str(tmp_path))
    assert "jira-avatar-sync\n" in result.stdout and "jira-avatar-sync, version" in result.stdout


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
