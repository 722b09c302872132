"""Reading Jira's users in bulk for a sweep, on every Jira version (docs/jira-api.md).

A sweep needs each user's current avatar (``avatarUrls``) to tell whether the picture is still
ours. Read one by one that is a round trip per user; these calls read fifty to thousands a time:

1. ``GET /user/list`` (Data Center 10.3+ and 11): every user, by cursor. Complete: a user it
   does not list is not in Jira.
2. Otherwise the members of the groups that grant application access: ``GET /applicationrole``
   names them (or ``jira.user_groups`` does), ``GET /group/member`` pages them, 50 a page, with
   ``total`` on the first page so that the later pages go out concurrently. A user in several
   groups is counted once. Not complete: a user without application access, or in a group the
   account may not list, is read on its own.
3. Where the account may not read application roles: ``GET /user/search`` partitioned by prefix
   (Atlassian's workaround for its cap, JRASERVER-65089). A prefix whose answer reaches the
   version's cap (1000 on 8.x-9.x, 100 on 10.x) is split into longer ones. Not complete either.

Every strategy makes at most ``jira.max_concurrency`` calls at once (the client's gate), in
the background when its caller is (a sweep's reads wait behind logins: app/jira_budget.py).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .jira import JiraClient, JiraError, user_from_bean
from .jira_budget import carried

log = logging.getLogger(__name__)

GROUP_PAGE = 50  # group/member answers at most 50 a page
USER_LIST_PAGE = 1000
PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789._-@"
MAX_PREFIX = 12  # deeper than this a prefix is not split again (its users are read alone)


@dataclass
class JiraUsers:
    """Users by user_key (lower-case name), and whether a user missing here is surely not in Jira."""

    users: dict
    complete: bool
    how: str  # user/list, group/member, user/search: for the log and the report


def read_all(jira: JiraClient, groups: tuple[str, ...] = ()) -> JiraUsers:
    """Jira's users, by the best way this Jira and this account allow (the module's docstring)."""
    listed = _user_list(jira)
    if listed is not None:
        return JiraUsers(listed, True, "user/list")
    chosen = list(groups) or application_groups(jira)
    if chosen is not None:
        members, unknown = group_members(jira, chosen)
        for group in unknown:
            log.warning("Jira has no group %r (jira.user_groups or an application role names it)", group)
        return JiraUsers(members, False, "group/member")
    return JiraUsers(search_by_prefix(jira), False, "user/search")


def _user_list(jira: JiraClient) -> dict | None:
    body = jira.read("/user/list", {"maxResults": USER_LIST_PAGE})
    if body is None:
        return None
    users: dict = {}
    while True:
        _collect(users, body.get("values") if isinstance(body, dict) else None)
        cursor = body.get("nextCursor") if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("isLast", True) or not cursor:
            return users
        body = jira.read("/user/list", {"cursor": cursor, "maxResults": USER_LIST_PAGE}, missing=())


def application_groups(jira: JiraClient) -> list[str] | None:
    """The groups any application role grants; None when the account may not read the roles."""
    try:
        roles = jira.read("/applicationrole", missing=(403, 404))
    except JiraError as exc:  # 401 on some versions for "not an admin": the same answer
        if exc.status not in (401,):
            raise
        roles = None
    if not isinstance(roles, list):
        return None
    return sorted(
        {g for role in roles if isinstance(role, dict) for g in role.get("groups") or [] if isinstance(g, str)}
    )


def group_members(jira: JiraClient, groups: list[str], inactive: bool = False) -> tuple[dict, list[str]]:
    """Every active member of ``groups`` (``inactive``: every member), once each, and the
    groups Jira does not have."""
    include = "true" if inactive else "false"

    def page(group: str, start: int):
        return jira.read(
            "/group/member",
            {"groupname": group, "includeInactiveUsers": include, "startAt": start, "maxResults": GROUP_PAGE},
        )

    users: dict = {}
    unknown: list[str] = []
    with ThreadPoolExecutor(max(1, jira.settings.max_concurrency)) as pool:
        firsts = list(zip(groups, pool.map(carried(lambda g: page(g, 0)), groups)))
        rest = []  # (group, start) of every later page, known from the first page's total
        for group, body in firsts:
            if body is None:
                unknown.append(group)
                continue
            values = _collect(users, body.get("values"))
            if not body.get("isLast", True):
                step = values or GROUP_PAGE
                total = body.get("total")
                if isinstance(total, int):
                    rest += [(group, start) for start in range(values, total, step)]
                else:  # no total: one page after the other
                    rest.append((group, values))
        while rest:
            highest: dict[str, int] = {}  # each group's last page asked for
            for group, start in rest:
                highest[group] = max(start, highest.get(group, start))
            more = []
            # answers are taken in as they come: 100,000 users' pages are never held at once
            for (group, start), body in zip(rest, pool.map(carried(lambda gs: page(*gs)), rest)):
                values = _collect(users, body.get("values") if body else None)
                # the last page of a group that grew meanwhile says so: read on from there
                if start == highest[group] and body and not body.get("isLast", True) and values:
                    more.append((group, start + values))
            rest = more
    return users, unknown


def search_by_prefix(jira: JiraClient) -> dict:
    """Every user that user/search finds, prefix by prefix, splitting a prefix whose answer hits
    the version's cap."""
    cap = 100 if jira.version()[:1] >= (10,) else 1000
    users: dict = {}

    def search(prefix: str):
        found = jira.read("/user/search", {"username": prefix, "startAt": 0, "maxResults": cap}) or []
        return prefix, found if isinstance(found, list) else []

    prefixes = list(PREFIX_ALPHABET)
    with ThreadPoolExecutor(max(1, jira.settings.max_concurrency)) as pool:
        while prefixes:
            split = []
            for prefix, found in pool.map(carried(search), prefixes):
                _collect(users, found)
                if len(found) >= cap and len(prefix) < MAX_PREFIX:
                    split += [prefix + c for c in PREFIX_ALPHABET]
            prefixes = split
    return users


def _collect(users: dict, beans) -> int:
    """Add the user beans to ``users`` (by lower-case name); how many beans there were."""
    if not isinstance(beans, list):
        return 0
    for bean in beans:
        if isinstance(bean, dict) and isinstance(bean.get("name"), str) and bean["name"]:
            users[bean["name"].lower()] = user_from_bean(bean, bean["name"])
    return len(beans)
