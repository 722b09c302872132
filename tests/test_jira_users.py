"""Reading Jira's users in bulk on each Jira version (app/jira_users.py), against the emulator."""
from __future__ import annotations

import logging

import pytest

from app import jira_users
from app.config import JiraSettings
from app.jira import JiraClient
from tests.helpers import JIRA_PASSWORD, JIRA_USER


def client(jira, **kw) -> JiraClient:
    return JiraClient(JiraSettings(url=jira.url, username=JIRA_USER, password=JIRA_PASSWORD, max_retries=0, **kw))


def seed(jira, n: int, prefix: str = "user", **kw) -> list[str]:
    names = [f"{prefix}{i:04d}" for i in range(n)]
    for name in names:
        jira.state.add_user(name, **kw)
    return names


def test_jira_11_lists_every_user_by_cursor(jira):
    jira.state.version = "11.0.0"
    names = seed(jira, 2500)
    read = jira_users.read_all(client(jira))
    assert read.complete and read.how == "user/list"
    assert set(names) <= set(read.users) and jira.state.count("GET /user/list") == 3  # 1000 a page
    assert read.users["user0001"].avatar_id is not None


def test_jira_9_reads_the_members_of_the_application_groups_concurrently(jira):
    jira.state.version = "9.12.0"
    jira.state.latency = 0.02
    names = seed(jira, 420)
    seed(jira, 30, prefix="both", groups=("jira-software-users", "jira-core-users"))
    jira.state.roles["jira-core"] = ["jira-core-users"]
    seed(jira, 5, prefix="nobody", groups=())                 # no application access
    seed(jira, 5, prefix="gone", active=False)                # inactive: not listed
    read = jira_users.read_all(client(jira, max_concurrency=4))
    assert not read.complete and read.how == "group/member"
    assert set(read.users) == set(names) | {f"both{i:04d}" for i in range(30)} | {JIRA_USER}
    # 450 in jira-software-users: 9 pages of 50, the first alone, then 8 at once, 4 in flight
    assert jira.state.count("GET /group/member") == 9 + 1 + 1  # + jira-core-users, + jira-administrators
    assert jira.state.peak("GET /group/member") == 4
    assert jira.state.count("GET /user") == 0


def test_configured_groups_replace_the_roles_and_a_missing_group_is_named(jira, caplog):
    jira.state.version = "9.12.0"
    seed(jira, 60, prefix="dev", groups=("developers",))
    seed(jira, 10)
    with caplog.at_level(logging.WARNING):
        read = jira_users.read_all(client(jira), groups=("developers", "no-such-group"))
    assert set(read.users) == {f"dev{i:04d}" for i in range(60)}
    assert "no-such-group" in caplog.text and jira.state.count("GET /applicationrole") == 0


@pytest.mark.parametrize("version, under_a", [("9.12.0", 1200), ("10.0.0", 400)])  # caps 1000, 100
def test_without_application_roles_user_search_is_split_by_prefix_under_the_cap(jira, version, under_a):
    jira.state.version, jira.state.roles_forbidden = version, True
    # more users under "a" than the version's cap, fewer under "b", and a name with a dot
    names = seed(jira, under_a, prefix="a") + seed(jira, 150, prefix="b") + seed(jira, 3, prefix="x.")
    read = jira_users.read_all(client(jira, max_concurrency=4))
    assert not read.complete and read.how == "user/search"
    assert set(names) <= set(read.users)  # nobody lost to the cap
    searches = jira.state.count("GET /user/search")
    assert searches > len(jira_users.PREFIX_ALPHABET)  # a prefix at the cap was split
    # only prefixes that hit the cap are split: fewer calls than reading user by user
    assert searches < len(names)


def test_an_account_that_may_not_read_roles_falls_back_and_says_nothing_is_wrong(jira):
    jira.state.version = "9.12.0"
    jira.state.add_account("plain", "pw", admin=False)
    seed(jira, 20)
    plain = JiraClient(JiraSettings(url=jira.url, username="plain", password="pw", max_retries=0))
    assert jira_users.application_groups(plain) is None
    assert {f"user{i:04d}" for i in range(20)} <= set(jira_users.read_all(plain).users)
