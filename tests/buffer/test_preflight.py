"""Reaching the shards before anything else starts: a refused connection, a wrong password, a
server that never answers and one that is not Redis are named errors, each with the address, each
within seconds."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import pytest

from buffer import (ShardAuthError, ShardRefusedError, ShardTimeoutError, ShardUnavailable, check_shards,
                    start_local_shards, stop_local_shards)
from buffer.ports import free_port
from tests.http_stub import fake_server


def test_a_refused_connection_names_the_address():
    port = free_port()  # free: nothing listens there
    started = time.monotonic()
    with pytest.raises(ShardRefusedError, match=f"127.0.0.1:{port} refused the connection"):
        check_shards([f"redis://127.0.0.1:{port}"], None)
    assert time.monotonic() - started < 3


def test_a_wrong_or_missing_password_is_an_auth_error(tmp_path):
    [shard] = start_local_shards(1, tmp_path, password="right-one")
    try:
        with pytest.raises(ShardAuthError, match=f"127.0.0.1:{shard.port} rejected the password"):
            check_shards([shard.url], "wrong-one")
        with pytest.raises(ShardAuthError, match=f"127.0.0.1:{shard.port} requires a password"):
            check_shards([shard.url], None)
        check_shards([shard.url], "right-one")
    finally:
        stop_local_shards([shard])


def test_a_server_that_never_answers_is_a_timeout():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ShardTimeoutError, match=f"127.0.0.1:{port} did not answer within 1.0s"):
            check_shards([f"redis://127.0.0.1:{port}"], None, timeout_s=1.0)
        assert time.monotonic() - started < 3


def test_a_server_that_is_not_redis_is_named_without_the_password():
    """An HTTP server on the shard's port used to end in redis-py's bare InvalidResponse ("Protocol
    error, got "H""), naming no address."""
    with fake_server({}) as (url, _):
        port = urlparse(url).port
        started = time.monotonic()
        with pytest.raises(ShardUnavailable, match=f"127.0.0.1:{port} answered, but not as Redis does "
                                                   r"\(not a Redis server\?\)") as caught:
            check_shards([f"redis://:hunter2@127.0.0.1:{port}"], None, timeout_s=1.0)
        assert "hunter2" not in str(caught.value)
        assert time.monotonic() - started < 3
