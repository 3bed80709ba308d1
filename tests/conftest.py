# --- Redis servers (tests/support/redis.py): one per session on free ports, flushed per test.

import collections.abc as _abc

import pytest as _pytest

from tests.support.redis import RedisClusterServers, RedisServer


@_pytest.fixture(scope="session")
def _redis_single_session() -> _abc.Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@_pytest.fixture(scope="session")
def _redis_cluster_session() -> _abc.Iterator[RedisClusterServers]:
    with RedisClusterServers() as cluster:
        yield cluster


@_pytest.fixture
def redis_server(_redis_single_session: RedisServer) -> RedisServer:
    """A single redis-server (no persistence) with no keys."""
    if _redis_single_session.process is None or _redis_single_session.process.poll() is not None:
        _redis_single_session.start()
    _redis_single_session.flush()
    return _redis_single_session


@_pytest.fixture
def redis_cluster(_redis_cluster_session: RedisClusterServers) -> RedisClusterServers:
    """A three-master Redis Cluster with no keys."""
    _redis_cluster_session.flush()
    return _redis_cluster_session
