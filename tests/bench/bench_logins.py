"""Benchmark: the webhook's two paths, on SQLite or PostgreSQL, with one or more replicas.

Run on demand (not part of the test suite):

    .venv/bin/python -m tests.bench.bench_logins --database sqlite
    .venv/bin/python -m tests.bench.bench_logins --database postgres --replicas 3

- storm: logins of 200 users who synced a moment ago (login_debounce_seconds = 600): each is
  answered from the debounce (the first time from the database, then from the process's
  cache), no database write. Jira sends one per authenticated request, so this is the path
  that carries most of the load.
- first: every request a different user: the full door, one durable queue write each.
- rig: GET /healthz through the same gunicorn (and HAProxy): what HTTP, gunicorn and the load
  generator cost on this machine by themselves, measured in the same run.

The queue workers are off (start_in_web = false): the door alone. wrk runs with 4 connections
and 1 thread; with several replicas, HAProxy spreads them (round robin).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import requests
import sqlalchemy

from tests.bench.bench_webhook import WRK_LUA, signed_bodies, start_gunicorn, write_config, wrk
from tests.helpers import pg_schema
from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig import slapd as slapd_rig
from tests.rig.haproxy import HAProxy
from tests.rig.ports import free_port


def seed_synced(database_url: str, names: list[str]) -> None:
    """Users whose last sync just ended well, as the store keeps them."""
    engine = sqlalchemy.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    now = datetime.now(UTC)
    with engine.begin() as conn:
        table = sqlalchemy.Table("user_state", sqlalchemy.MetaData(), autoload_with=conn)
        value = now if engine.dialect.name == "postgresql" else now.replace(tzinfo=None)
        conn.execute(table.insert(), [{"username": n, "created_avatar_ids": "[]", "attempts": 1,
                                       "last_outcome": "updated", "last_attempt_at": value,
                                       "last_success_at": value} for n in names])
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="avatar-bench-logins-"))
    held = ExitStack()
    database_url = (held.enter_context(pg_schema("avbench")) if args.database == "postgres"
                    else f"sqlite:///{work}/state.db")
    ldap = slapd_rig.Slapd.running(work / "slapd")
    procs, lb = [], None
    results = {"database": args.database, "replicas": args.replicas, "wrk_connections": args.connections}
    try:
        people = ldap.add_ou("people")
        state = JiraState(version="10.3.0")
        state.add_account("avatar-sync", "pw", admin=True)
        with EmulatorServer(state) as jira:
            ports = []
            for i in range(args.replicas):
                cfg = work / f"r{i}.toml"
                write_config(cfg, work, jira.url, ldap, people, workers_on=False, database_url=database_url)
                ports.append(free_port())
                procs.append(start_gunicorn(cfg, ports[-1], work / f"r{i}.log", {"AVATAR_SYNC_LOG_LEVEL": "WARNING"}))
            port = ports[0]
            if args.replicas > 1:
                lb = HAProxy(work, {f"r{i}": p for i, p in enumerate(ports)})
                lb.wait_until_serving()
                port = lb.port
            for p in ports:  # each replica's first use of the database creates the schema
                requests.get(f"http://127.0.0.1:{p}/readyz", timeout=30)
            storm = [f"storm{i}" for i in range(200)]
            seed_synced(database_url, storm)
            for name, count, prefix in (("storm", 200, "storm"), ("first", 200_000, "first")):
                bodies = work / f"{name}.txt"
                signed_bodies(bodies, count, prefix)
                lua = work / f"{name}.lua"
                lua.write_text(WRK_LUA % {"file": bodies})
                wrk(port, lua, 3, args.connections, 1)  # warm-up (the storm's users reach the caches)
                results[name] = wrk(port, lua, args.duration, args.connections, 1)
            results["rig_healthz"] = wrk(port, None, args.duration, args.connections, 1, path="/healthz")
    finally:
        if lb:
            lb.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        ldap.stop()
        held.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
