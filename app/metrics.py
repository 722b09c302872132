"""Prometheus metrics: what each process counts, and what is read at scrape time.

Counters and histograms (``*_total``, ``*_seconds``) count events in the process that saw
them. Under gunicorn every worker counts apart and a scrape reaches one worker, so
app/gunicorn_conf.py points prometheus_client's multi-process mode at a directory
(PROMETHEUS_MULTIPROC_DIR) and a scrape adds up every worker of the host, and a separate
``jira-avatar-sync worker`` sharing that directory. Across replicas, Prometheus scrapes each
replica and ``sum()`` adds them up, as for any service.

Gauges are read when scraped, from the shared database (the queue, the sweeps) and from this
process's readiness probe, so every worker and replica answers alike for the database's part.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from . import __version__
from .database import describe_error
from .outcomes import OUTCOMES, JobState, SweepStatus
from .store import UNAVAILABLE as DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

PREFIX = "jira_avatar_sync_"

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # its files are opened as the metrics are made, below
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], mode=0o700, exist_ok=True)

SYNCS = Counter(PREFIX + "syncs_total", "Syncs that ended, by outcome (dry runs not counted)", ["outcome", "source"])
SYNC_SECONDS = Histogram(
    PREFIX + "sync_duration_seconds",
    "How long a sync took, directory and Jira included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WEBHOOKS = Counter(PREFIX + "webhook_requests_total", "Webhook requests by answer", ["status"])
JIRA_REQUESTS = Counter(
    PREFIX + "jira_requests_total", "Calls to Jira by method and HTTP status (error: no answer)", ["method", "status"]
)
JIRA_SECONDS = Histogram(
    PREFIX + "jira_request_duration_seconds",
    "Calls to Jira, by method",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LDAP_ERRORS = Counter(
    PREFIX + "ldap_errors_total", "Directory calls that failed (down, refused, timed out)", ["directory"]
)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(services) -> bytes:
    """The text a scrape gets: every process's counters, and the gauges read now."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        MultiProcessCollector(registry)
    else:
        for metric in (SYNCS, SYNC_SECONDS, WEBHOOKS, JIRA_REQUESTS, JIRA_SECONDS, LDAP_ERRORS):
            registry.register(metric)
    registry.register(_Gauges(services))
    return generate_latest(registry)


class _Gauges:
    """Read at scrape time: the database's figures are the same whichever process answers."""

    def __init__(self, services):
        self.services = services

    def collect(self):
        svc = self.services
        g = GaugeMetricFamily(PREFIX + "build_info", "The running version", labels=["version"])
        g.add_metric([__version__], 1)
        yield g
        yield GaugeMetricFamily(
            PREFIX + "disabled", "1 when photo_attributes is empty", value=1 if svc.settings.sync_disabled else 0
        )
        checks = svc.readiness.current()
        up = {name: check["status"] == "ok" for name, check in checks.items()}
        database: list[GaugeMetricFamily] = []
        if up["database"]:  # the rest is read from the database
            try:
                database = list(_database_gauges(svc))
            except DATABASE_UNAVAILABLE as exc:
                # gone since the probe: the scrape still answers (a 503 would lose it, the
                # counters and the alert on the database down with it), without those gauges
                log.warning("metrics: the database's gauges not read: %s", describe_error(exc))
                up["database"] = False
        g = GaugeMetricFamily(
            PREFIX + "dependency_up", "1 while a dependency answers (this process's probe)", labels=["dependency"]
        )
        for name, ok in up.items():
            g.add_metric([name], 1 if ok else 0)
        yield g
        yield from database


def _database_gauges(svc):
    queue = svc.queue.counts()
    g = GaugeMetricFamily(PREFIX + "queue_jobs", "Jobs in the durable queue, by state", labels=["state"])
    for state in JobState:
        g.add_metric([state], queue.get(state, 0))
    yield g
    yield GaugeMetricFamily(
        PREFIX + "queue_login_wait_seconds",
        "How long the oldest due login job has waited for a worker (0: none waits)",
        value=round(svc.queue.login_wait(), 3),
    )
    users = svc.store.counts_by_outcome()
    g = GaugeMetricFamily(PREFIX + "users", "Users by the outcome of their last sync", labels=["outcome"])
    for outcome in OUTCOMES:
        g.add_metric([outcome], users.get(outcome, 0))
    yield g
    last_success = svc.store.last_success_at()
    if last_success is not None:
        yield GaugeMetricFamily(
            PREFIX + "last_success_timestamp_seconds",
            "When a sync last ended in a settled outcome",
            value=last_success.timestamp(),
        )
    running, last = svc.sweeps.running(), svc.sweeps.last_ended()
    yield GaugeMetricFamily(PREFIX + "sweep_running", "1 while a sweep runs", value=1 if running else 0)
    g = GaugeMetricFamily(PREFIX + "sweep_users", "Users of the running sweep", labels=["state"])
    g.add_metric(["total"], running["total"] if running else 0)
    g.add_metric(["done"], running["done"] if running else 0)
    yield g
    # 0 and no status while no sweep has ever ended (the "no sweep for 2 days" alert then fires)
    yield GaugeMetricFamily(
        PREFIX + "last_sweep_end_timestamp_seconds",
        "When the last sweep ended (0: never)",
        value=last["finished_epoch"] if last else 0,
    )
    g = GaugeMetricFamily(PREFIX + "last_sweep_status", "1 for the status the last sweep ended with", labels=["status"])
    for status in (SweepStatus.FINISHED, SweepStatus.FAILED, SweepStatus.CANCELLED):
        g.add_metric([status], 1 if last and last["status"] == status else 0)
    yield g
