"""Shared fixtures: a real slapd, a real Samba AD DC, the Jira emulator, settings and services.

Directory servers start once per session; each test gets its own ``ou`` so tests never see
each other's users. Where a server is not installed the tests skip locally, but fail under CI
(CI=true), where .ci/run installs everything.
"""
from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy

from app.services import build_services
from tests.helpers import JIRA_PASSWORD, JIRA_USER, PG_URL, Service, pg_schema, unavailable
from tests.jira_emulator import EmulatorServer, JiraState
from tests.rig import samba as samba_rig
from tests.rig import slapd as slapd_rig

_ou_counter = itertools.count(1)




@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    if not Path("/usr/sbin/slapd").exists():
        unavailable("OpenLDAP slapd")
    server = slapd_rig.Slapd.running(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def samba(tmp_path_factory):
    if not shutil.which("samba-tool") or not Path("/usr/sbin/samba").exists():
        unavailable("Samba AD DC")
    dc = samba_rig.SambaDC(tmp_path_factory.mktemp("samba"))
    dc.provision()
    dc.start()
    yield dc
    dc.stop()


@pytest.fixture
def ldap_ou(slapd):
    """A fresh organisational unit for this test's users."""
    return slapd.add_ou(f"t{next(_ou_counter)}")


@pytest.fixture
def ad_ou(samba):
    return samba.add_ou(f"T{next(_ou_counter)}")


@pytest.fixture
def jira():
    state = JiraState(version="10.3.0")
    state.add_account(JIRA_USER, JIRA_PASSWORD, admin=True)
    with EmulatorServer(state) as server:
        yield server


@pytest.fixture
def gunicorn_service(tmp_path, slapd, ldap_ou, jira):
    """The real service under gunicorn (tests.helpers.Service), started, stopped after the test."""
    svc = Service(tmp_path, slapd, ldap_ou, jira.url)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def services_for(tmp_path):
    """Build services from settings; closed after the test."""
    built = []

    def build(settings):
        services = build_services(settings)
        built.append(services)
        return services
    yield build
    for services in built:
        services.close()


# -- databases: the store and queue tests run on SQLite and on the local PostgreSQL --------



def _postgres_available() -> bool:
    try:
        engine = sqlalchemy.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"),
                                          connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def pg_url():
    """A throw-away schema in the local PostgreSQL, so runs never see each other's rows."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI")
        pytest.skip("PostgreSQL not reachable")
    with pg_schema() as url:
        yield url


@pytest.fixture
def fresh_pg_url(pg_url):
    """A PostgreSQL schema of the test's own, dropped after it: for tests that change the
    schema itself (migrations) or share it between processes (replicas)."""
    with pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return request.getfixturevalue("pg_url")


# -- markers by what a test needs, so that `pytest -m "not slapd and not samba and not postgres"`
# runs the tests that need no server at all (CONTRIBUTING.md) ---------------------------------

_NEEDS = {"slapd": "slapd", "samba": "samba", "pg_url": "postgres"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    parallel = config.pluginmanager.hasplugin("xdist")
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _NEEDS.items():
            if fixture in fixtures:
                item.add_marker(getattr(pytest.mark, marker))
        callspec = getattr(item, "callspec", None)
        params = [v for v in callspec.params.values() if isinstance(v, str)] if callspec is not None else []
        if "postgres" in params:
            item.add_marker(pytest.mark.postgres)
        if "samba" in params:  # a test that asks for the fixture by name
            item.add_marker(pytest.mark.samba)
        if parallel and (item.get_closest_marker("samba") or item.get_closest_marker("postgres")):
            # Under pytest-xdist (--dist loadgroup) the tests of the machine's one-of-a-kind
            # servers run one after another on one worker: Samba's LDAP port is 389 (one DC per
            # machine), and a replica test restarts the machine's PostgreSQL, which would end
            # every other PostgreSQL test's sessions (and locks) under it
            item.add_marker(pytest.mark.xdist_group("machine-servers"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under --dist loadgroup, xdist groups tests by a suffix it adds to their ids; some pytest
    releases ignore that (setup.cfg pins pytest below them). Fail such a test with the reason,
    before it meets Samba's port taken or PostgreSQL restarted under it by another worker."""
    if (getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group")
            and not item.nodeid.endswith("@machine-servers")):
        pytest.fail("pytest-xdist did not group this test with the other tests of the machine's servers: "
                    "this pytest and pytest-xdist do not work together (setup.cfg)", pytrace=False)
