"""A real PgBouncer on a loopback port in front of the local PostgreSQL, in transaction mode (the
usual pooler in front of a cluster's database): each transaction, and each statement run in
autocommit, may land on another server session. It passes no ``options`` on, so a test behind
it gets a throw-away database of its own rather than a schema."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.helpers import pg_database, unavailable
from tests.rig.children import DIE_WITH_PARENT
from tests.rig.ports import free_port


@contextmanager
def pgbouncer(work: Path, pool_mode: str = "transaction") -> Iterator[str]:
    """The URL of a new database reached through PgBouncer; both gone afterwards."""
    binary = shutil.which("pgbouncer") or unavailable("pgbouncer (apt-get install pgbouncer)")
    with pg_database("avsync_pgb") as direct_url:
        target = make_url(direct_url)
        port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        (work / "users.txt").write_text(f'"{target.username}" ""\n')
        config = work / "pgbouncer.ini"
        config.write_text(f"""
[databases]
{target.database} = host={target.host} port={target.port or 5432} dbname={target.database}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {work / "users.txt"}
pool_mode = {pool_mode}
default_pool_size = 4
max_client_conn = 200
""")
        user = ["-u", "postgres"] if os.geteuid() == 0 else []  # it refuses to run as root
        if user:
            for path in (work, *work.iterdir()):
                shutil.chown(path, "postgres")
        with open(work / "pgbouncer.log", "ab") as log:
            proc = subprocess.Popen([*DIE_WITH_PARENT, binary, *user, str(config)], stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            _wait_listening(port, proc, work / "pgbouncer.log")
            yield target.set(port=port).render_as_string(hide_password=False)
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"pgbouncer exited: {log.read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"pgbouncer did not listen: {log.read_text()[-2000:]}")
