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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from tests.helpers import PG_URL, unavailable
from tests.rig.children import DIE_WITH_PARENT
from tests.rig.ports import free_port


@contextmanager
def pgbouncer(work: Path, pool_mode: str = "transaction") -> Iterator[str]:
    """The URL of a new database reached through PgBouncer; both gone afterwards."""
    binary = shutil.which("pgbouncer") or unavailable("pgbouncer (apt-get install pgbouncer)")
    target = make_url(PG_URL)
    name = f"avsync_pgb_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"),
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "users.txt").write_text(f'"{target.username}" ""\n')
    config = work / "pgbouncer.ini"
    config.write_text(f"""
[databases]
{name} = host={target.host} port={target.port or 5432} dbname={name}
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
        shutil.chown(work, "postgres")
        for path in work.iterdir():
            shutil.chown(path, "postgres")
    log = open(work / "pgbouncer.log", "ab")
    proc = subprocess.Popen([*DIE_WITH_PARENT, binary, *user, str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, work / "pgbouncer.log")
        yield target.set(port=port, database=name).render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


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
