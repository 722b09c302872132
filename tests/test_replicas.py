"""Replicas behave as one service: three (or four) copies of the real service under gunicorn,
on loopback behind a real HAProxy that health-checks /readyz, sharing the machine's
PostgreSQL, with a real slapd and the Jira emulator. Nothing accepted is lost, nothing is
uploaded twice, a sweep finishes exactly once per user with one report, whatever replicas
come and go and even when PostgreSQL restarts."""
from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests import photos
from tests.helpers import ADMIN, Service, add_users, synced, wait_until
from tests.rig.haproxy import HAProxy

pytestmark = pytest.mark.postgres

class Cluster:
    def __init__(self, tmp_path, slapd, ldap_ou, jira, database_url, replicas: int, spare: int = 0,
                 env: dict | None = None):
        self.replicas = [Service(tmp_path, slapd, ldap_ou, jira.url, database_url=database_url, name=f"r{i}-",
                                 env=env) for i in range(replicas + spare)]
        for replica in self.replicas[:replicas]:
            replica.start()
        self.lb = HAProxy(tmp_path, {f"r{i}": r.port for i, r in enumerate(self.replicas)})
        self.lb.wait_until_serving()
        self.url = self.lb.url

    def login(self, name: str) -> int:
        """As Jira's listener posts it through the load balancer; a refused post is sent again
        (the sender's part): the status that finally came back."""
        status = 0
        for _ in range(20):
            try:
                status = self.replicas[0].login(name, base=self.url).status_code
            except requests.RequestException:
                status = 0
            if status == 202 or status == 200:
                return status
            time.sleep(0.2)
        return status

    def admin(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, self.url + path, headers={"Authorization": f"Bearer {ADMIN}"},
                                timeout=10, **kw)

    def stop(self) -> None:
        self.lb.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def cluster(tmp_path, slapd, ldap_ou, jira, fresh_pg_url):
    made = []

    def make(replicas: int = 3, spare: int = 0, env: dict | None = None) -> Cluster:
        made.append(Cluster(tmp_path, slapd, ldap_ou, jira, fresh_pg_url, replicas, spare, env))
        return made[-1]
    yield make
    for c in made:
        c.stop()


def webhooks_answered(replica) -> float:
    text = requests.get(replica.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("jira_avatar_sync_webhook_requests_total{"))


def test_logins_over_three_replicas_one_killed_mid_burst(cluster, slapd, ldap_ou, jira):
    names = [f"h{i:03d}" for i in range(150)]
    add_users(slapd, ldap_ou, jira, names)
    jira.state.latency = 0.02  # so the kill lands while syncs are in flight
    c = cluster(3)
    victim = c.replicas[1]
    with ThreadPoolExecutor(12) as pool:
        first = list(pool.map(c.login, names[:50]))
        victim.kill9()  # master and workers, mid-burst
        rest = list(pool.map(c.login, names[50:]))
    assert set(first + rest) == {202}  # every login accepted, by a replica that was alive
    wait_until(lambda: all(synced(jira, n) for n in names), 120, "every accepted login to be synced")
    created = {n: jira.state.created_for(n) for n in names}
    assert {n: k for n, k in created.items() if k != 1} == {}  # no avatar uploaded twice
    assert all(len(jira.state.custom_avatars(n)) == 1 for n in names)
    # the load balancer routes around the dead replica: every login now lands at once
    time.sleep(1)
    late = [f"late{i}" for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda n: c.replicas[0].login(n, base=c.url).status_code, late)) <= {200, 202}
    survivors = [r for r in c.replicas if r is not victim]
    assert all(webhooks_answered(r) > 0 for r in survivors)  # the logins were spread


@pytest.mark.parametrize("fault", ["a replica leaves and another joins", "PostgreSQL restarts"])
def test_a_sweep_of_2000_users_finishes_exactly_once_through_the_fault(cluster, slapd, ldap_ou, jira, fault):
    names = [f"w{i:04d}" for i in range(2000)]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for n in names:
        jira.state.add_user(n)
    c = cluster(3, spare=1)
    started = c.admin("POST", "/admin/sweeps", json={})
    assert started.status_code == 202, started.text
    sweep_id = started.json()["id"]

    def summary() -> dict:
        for _ in range(50):  # through the fault, the load balancer may answer 503 for a moment
            try:
                answer = c.admin("GET", f"/admin/sweeps/{sweep_id}")
                if answer.status_code == 200:
                    return answer.json()
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("no replica answered for the sweep")
    wait_until(lambda: summary()["done"] >= 400, 180, "the sweep to be under way")
    if fault.startswith("a replica"):
        c.replicas[0].stop()  # leaves (SIGTERM: its workers finish what they hold)
        c.replicas[3].start()  # joins
    else:
        cluster_name = os.listdir("/etc/postgresql")[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster_name, "main", "restart"],
                       check=True, timeout=60)
    wait_until(lambda: summary()["status"] != "running", 300, "the sweep to finish")
    report = summary()
    assert report["status"] == "finished", report
    # every user once; the service's own Jira account is in no directory
    assert report["counts"] == {"updated": 2000, "not_in_directory": 1}, report
    created = {n: jira.state.created_for(n) for n in names}
    assert {n: k for n, k in created.items() if k != 1} == {}  # exactly once per user
    assert [s["id"] for s in c.admin("GET", "/admin/sweeps").json()["sweeps"]] == [sweep_id]  # one report


def test_the_cluster_wide_jira_budget_holds_across_replicas(cluster, slapd, ldap_ou, jira):
    """Three replicas of two gunicorn workers each, every one with sync threads: per process
    they would put up to 12 calls in flight; with limits_scope = cluster, Jira never sees more
    than jira.max_concurrency at once, nor more than jira.max_requests_per_second."""
    names = [f"b{i:03d}" for i in range(120)]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for n in names:
        jira.state.add_user(n)
    jira.state.latency = 0.05
    c = cluster(3, env={"AVATAR_SYNC_JIRA_MAX_CONCURRENCY": "2", "AVATAR_SYNC_JIRA_LIMITS_SCOPE": "cluster",
                        "AVATAR_SYNC_JIRA_MAX_REQUESTS_PER_SECOND": "30"})
    calls_before, started = sum(jira.state.counts.values()), time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(c.login, names)) == {202}
    wait_until(lambda: all(synced(jira, n) for n in names), 180, "every login to be synced")
    elapsed, calls = time.monotonic() - started, sum(jira.state.counts.values()) - calls_before
    assert jira.state.peak("*") == 2, jira.state.peak_in_flight  # reached, never passed
    assert calls / elapsed <= 30 * 1.05, (calls, elapsed)
    assert all(jira.state.created_for(n) == 1 for n in names)


def test_a_sweep_started_on_one_replica_is_cancelled_from_another_everywhere(cluster, slapd, ldap_ou, jira):
    names = [f"c{i:04d}" for i in range(600)]
    slapd.add_users(ldap_ou, [(n, photos.photo(40, 40)) for n in names])
    for n in names:
        jira.state.add_user(n)
    jira.state.latency = 0.03  # slow enough that the sweep is still under way when cancelled
    c = cluster(2)
    one, other = c.replicas[:2]
    auth = {"Authorization": f"Bearer {ADMIN}"}
    sweep_id = requests.post(one.url + "/admin/sweeps", json={}, headers=auth, timeout=10).json()["id"]

    def summary(replica) -> dict:
        return requests.get(f"{replica.url}/admin/sweeps/{sweep_id}", headers=auth, timeout=10).json()
    wait_until(lambda: summary(other)["done"] >= 20, 120, "the sweep to be under way on both")
    assert requests.post(f"{other.url}/admin/sweeps/{sweep_id}/cancel", headers=auth, timeout=10).status_code == 200
    assert summary(one)["status"] == "cancelled"
    time.sleep(3)  # what either replica had in hand finishes; nothing more starts
    uploads = jira.state.count("POST /user/avatar/temporary")
    time.sleep(3)
    assert jira.state.count("POST /user/avatar/temporary") == uploads
    assert uploads < len(names)
