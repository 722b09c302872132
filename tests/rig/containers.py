"""The container tests' images and podman's settings on these machines. No registry is
reachable here: the service's image is deploy/docker/Dockerfile built on a Debian 12 base made
with debootstrap, and PostgreSQL's and HAProxy's are stand-ins for the registry's images built
on that base from Debian's packages (tests/data/postgres-image: PostgreSQL 15 behind an
entrypoint that honours POSTGRES_USER, POSTGRES_DB and POSTGRES_HOST_AUTH_METHOD as the
official one does; tests/data/haproxy-image: HAProxy 2.6 reading the official image's path)."""
from __future__ import annotations

import fcntl
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import requests

from tests.helpers import required, wait_until

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/jira-avatar-sync-test-base:bookworm"
IMAGE = "localhost/jira-avatar-sync:test"
POSTGRES_IMAGE = "localhost/jira-avatar-sync-test-postgres:15"
HAPROXY_IMAGE = "localhost/jira-avatar-sync-test-haproxy:2.6"

# What this sandbox needs to start a container at all: runc (crun refuses its hybrid cgroups),
# cgroupfs (no systemd), and rlimits no higher than its own (it may not raise them).
RUN = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
SANDBOX = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# the same as podman's configuration, for podman-compose (CONTAINERS_CONF names the file)
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def podman(*args, timeout=900, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([required("podman"), *args], capture_output=True, text=True, timeout=timeout)
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _build(containerfile: Path, tag: str, context: Path, tmp_path: Path) -> None:
    """``containerfile`` on the debootstrap base, with chroot isolation; podman's layer cache
    makes a second build of the same files take seconds. One build at a time on the machine:
    the container tests start together under xdist, and after a change to app/ each built the
    image anew beside the others (none found the layers in the cache yet), a minute's CPU each
    and an untagged 380 MB image left behind by every build but the last."""
    with open(Path(tempfile.gettempdir()) / "jira-avatar-sync-image-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # let go when the file closes, or the process dies
        _build_alone(containerfile, tag, context, tmp_path)


def _build_alone(containerfile: Path, tag: str, context: Path, tmp_path: Path) -> None:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        rootfs = tmp_path / "rootfs"
        subprocess.run([required("debootstrap"), "--variant=minbase",
                        "--include=python3,python3-venv,ca-certificates", "bookworm", str(rootfs),
                        "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=900)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True,
                       capture_output=True, timeout=300)
        tar.wait()
    # the machine's own CA bundle and pip settings: its way to PyPI goes through them
    mounts = [arg for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf") if Path(path).exists()
              for arg in ("-v", f"{path}:{path}:ro")]
    before = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    podman("build", "--isolation=chroot", "--format", "docker", *mounts, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "-f", str(containerfile), "-t", tag, str(context))
    if before and podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip() != before:
        podman("rmi", before, check=False)  # the build of the code before (kept while a container uses it)


def build_image(tmp_path: Path) -> None:
    """The service's image, from deploy/docker/Dockerfile, as IMAGE."""
    _build(ROOT / "deploy" / "docker" / "Dockerfile", IMAGE, ROOT, tmp_path)


def build_postgres_image(tmp_path: Path) -> None:
    """The stand-in for the postgres:15 image, as POSTGRES_IMAGE."""
    context = ROOT / "tests" / "data" / "postgres-image"
    _build(context / "Containerfile", POSTGRES_IMAGE, context, tmp_path)


def build_haproxy_image(tmp_path: Path) -> None:
    """The stand-in for the haproxy:2.6 image, as HAPROXY_IMAGE."""
    context = ROOT / "tests" / "data" / "haproxy-image"
    _build(context / "Containerfile", HAPROXY_IMAGE, context, tmp_path)


def wait_ready(url: str, seconds: float, logs: Callable[[], str]) -> None:
    """Until the service at ``url`` answers /readyz with ready; else fail, showing ``logs()``."""

    def ready() -> bool:
        try:
            return requests.get(url + "/readyz", timeout=2).json()["status"] == "ready"
        except (requests.RequestException, ValueError):
            return False
    try:
        wait_until(ready, seconds, f"{url} to be ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {logs()}") from None
