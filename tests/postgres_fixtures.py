"""Pytest plugin: a real PostgreSQL for the Postgres store's tests.

Load it from a test module with ``pytest_plugins = ["tests.postgres_fixtures"]``.
(PYTEST_DONT_REWRITE: it holds no asserts, and ``--doctest-modules`` may import
it before the first test module registers it.)

- ``DRIPCORE_TEST_POSTGRES_DSN`` set: the tests use that database (they create
  and drop their own schemas in it, nothing else).
- Otherwise, with the server binaries installed (Debian's ``postgresql``): one
  throwaway cluster for the session (initdb + pg_ctl in a temp dir, on a free
  loopback port), stopped and deleted at the end.
- Otherwise every test that needs PostgreSQL is skipped, with the reason shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.pg_cluster import PostgresCluster, drop_schema, find_bindir, missing_reason, unique_schema

ENV_DSN = "DRIPCORE_TEST_POSTGRES_DSN"
TEST_DATABASE = "dripcore_test"


@pytest.fixture(scope="session")
def postgres_cluster_or_none() -> Iterator[PostgresCluster | None]:
    """The session's private cluster, or None when an external DSN is used."""
    if os.environ.get(ENV_DSN):
        yield None
        return
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(missing_reason())
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEST_DATABASE}")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_cluster_or_none: PostgresCluster | None) -> str:
    """A DSN of a database the tests may create schemas in."""
    if postgres_cluster_or_none is None:
        return os.environ[ENV_DSN]
    return postgres_cluster_or_none.dsn(TEST_DATABASE)


@pytest.fixture
def new_schema(postgres_dsn: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh schema names; the schemas are dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(unique_schema())
        return made[-1]

    yield make
    for schema in made:
        drop_schema(postgres_dsn, schema)


@pytest.fixture
def private_cluster() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, to stop, kill and restart (needs the binaries)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("this test stops and restarts a server of its own: it needs the PostgreSQL binaries")
    cluster = PostgresCluster(bindir, durable=True, max_connections=30)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
