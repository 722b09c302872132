"""A real HAProxy on a loopback port in front of the service's replicas, health-checking
each one's /readyz, as deploy/haproxy/haproxy.cfg.example does in production."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.rig.children import DIE_WITH_PARENT
from tests.rig.ports import free_port


class HAProxy:
    def __init__(self, work: Path, backends: dict[str, int]):
        """``backends``: replica name -> its port (a replica not started yet is simply down)."""
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in backends.items())
        self.config = work / "haproxy.cfg"
        self.config.write_text(f"""
global
    maxconn 1024
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    retry-on conn-failure empty-response
frontend web
    bind 127.0.0.1:{self.port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2
{servers}
""")
        self.log = work / "haproxy.log"
        self.proc = subprocess.Popen([*DIE_WITH_PARENT, binary, "-db", "-f", str(self.config)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def wait_until_serving(self, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError("HAProxy found no healthy replica:\n" + self.log.read_text()[-2000:])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
