"""The objects one process works with, built from Settings. Building opens nothing:
directories, database and Jira connect lazily, after gunicorn has forked."""
from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .directory import Directory, build_directories
from .jira import JiraClient
from .queue import LoginQueue, RetryPolicy
from .store import Store
from .sync import Syncer


@dataclass
class Services:
    settings: Settings
    store: Store
    directories: list[Directory]
    jira: JiraClient
    syncer: Syncer
    queue: LoginQueue

    def close(self) -> None:
        for directory in self.directories:
            directory.close()
        self.store.dispose()


def build_services(settings: Settings) -> Services:
    store = Store(settings.database_url)
    directories = build_directories(settings)
    jira = JiraClient(settings.jira)
    w = settings.worker
    queue = LoginQueue(store, RetryPolicy(w.max_attempts, w.retry_base_seconds, w.retry_max_seconds,
                                          w.lease_seconds))
    return Services(settings, store, directories, jira, Syncer(settings, directories, jira, store), queue)
