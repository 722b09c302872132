"""The service's PostgreSQL behind a real PgBouncer in transaction mode, the usual pooler in front
of a cluster's database: a transaction, or a statement in autocommit, may land on any server
session, so nothing may rest on a session's own state between them."""
from __future__ import annotations

import threading
import time

import pytest

from app import jira_budget, states
from app.store import Store
from tests.rig.pgbouncer import pgbouncer


@pytest.fixture
def pooled_url(pg_url, tmp_path):
    with pgbouncer(tmp_path / "pgbouncer") as url:
        yield url


def test_the_store_reads_and_writes_from_many_threads_through_transaction_pooling(pooled_url):
    """psycopg prepares a statement it has run five times on a connection, and a transaction's
    batch write (executemany) at once. Behind PgBouncer the next use of that name reached
    another server session, which lacked it or had another client's ("prepared statement
    "_pg3_0" already exists"): a burst of first logins' queue writes, a sweep batch's notes,
    failed now and then."""
    store = Store(pooled_url)
    errors: list[str] = []

    def burst(n: int) -> None:  # one statement each, in autocommit: a first login's kind
        try:
            for i in range(30):
                store.remember_created(f"user{n}", str(i))
        except Exception as exc:  # noqa: BLE001 - reported below, with the others
            errors.append(f"user{n}: {type(exc).__name__}: {str(exc).splitlines()[0]}")

    def batches(n: int) -> None:  # a sweep batch's kind: many rows in one transaction
        try:
            for i in range(10):
                with store.transaction() as tx:
                    note = lambda state, i=i: setattr(state, "last_error", f"round {i}")  # noqa: E731
                    states.update_many(tx, [(f"batch{n}-{u}", note) for u in range(20)])
        except Exception as exc:  # noqa: BLE001 - reported below, with the others
            errors.append(f"batch{n}: {type(exc).__name__}: {str(exc).splitlines()[0]}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4) for work in (burst, batches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    assert all(store.get(f"user{n}").created_avatar_ids == [str(i) for i in range(30)] for n in range(4))
    assert all(store.get(f"batch{n}-{u}").last_error == "round 9" for n in range(4) for u in range(20))
    store.dispose()


def test_the_cluster_jira_budget_holds_and_gives_back_its_slots_through_transaction_pooling(
        pooled_url, monkeypatch):
    """limits_scope = "cluster": a Jira call holds one of max_concurrency advisory locks. Taken
    and given back by two statements in autocommit, the lock stayed on whichever server session
    took it, and the give-back reached another: after a few calls every slot was held for good,
    and each Jira call waited for one until it failed."""
    monkeypatch.setattr(jira_budget, "WAIT_SECONDS", 5.0)
    store = Store(pooled_url)
    store.ping()  # the schema
    replicas = [jira_budget.ClusterBudget(store, 2, 0) for _ in range(2)]
    in_flight, most, errors = [0], [0], []
    lock = threading.Lock()

    def calls(budget) -> None:
        try:
            for _ in range(15):
                with budget.call():
                    with lock:
                        in_flight[0] += 1
                        most[0] = max(most[0], in_flight[0])
                    time.sleep(0.005)  # Jira answering
                    with lock:
                        in_flight[0] -= 1
        except Exception as exc:  # noqa: BLE001 - reported below, with the others
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=calls, args=(budget,)) for budget in replicas for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    assert most[0] == 2  # the cluster's two slots, both used, never more
    with store.read() as conn:  # every slot given back
        held = conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").scalar()
    assert held == 0
    for budget in replicas:
        budget._slots_engine.dispose()
    store.dispose()
