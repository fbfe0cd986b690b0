"""Reaching a shard before anything depends on it: each way it can fail is its own named error.

A run checks every configured shard before Ray, vLLM or DeepSpeed start, so that a wrong port, a
wrong password or an unreachable host is reported within seconds with the address, instead of
surfacing minutes later as a rate-limiter timeout.
"""

from __future__ import annotations

from urllib.parse import urlparse

import redis

from buffer.errors import ShardAuthError, ShardRefusedError, ShardTimeoutError, ShardUnavailable

CONNECT_TIMEOUT_S = 3.0


def shard_address(url: str) -> str:
    parsed = urlparse(url)
    return parsed.path if parsed.scheme == "unix" else f"{parsed.hostname}:{parsed.port}"  # never the password


def connect_checked(url: str, password: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> redis.Redis:
    """A connection to the shard at `url` that has answered PING (authenticated when a password is set)."""
    conn = redis.Redis.from_url(url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        conn.ping()
    except (redis.AuthenticationError, redis.ResponseError) as e:
        conn.close()
        if isinstance(e, redis.ResponseError) and not ("NOAUTH" in str(e) or "WRONGPASS" in str(e)):
            raise ShardUnavailable(f"replay shard {shard_address(url)} refused PING (not a Redis server, or one "
                                   f"that forbids it?): {e}") from e
        if password is None:
            raise ShardAuthError(f"replay shard {shard_address(url)} requires a password (set replay.password or "
                                 f"TIDAL_REDIS_PASSWORD)") from e
        raise ShardAuthError(f"replay shard {shard_address(url)} rejected the password: {e}") from e
    except redis.TimeoutError as e:
        conn.close()
        raise ShardTimeoutError(f"replay shard {shard_address(url)} did not answer within {timeout_s}s") from e
    except redis.ConnectionError as e:
        conn.close()
        if isinstance(e.__cause__, TimeoutError) or "timed out" in str(e).lower():
            raise ShardTimeoutError(f"replay shard {shard_address(url)} did not answer within {timeout_s}s") from e
        raise ShardRefusedError(f"replay shard {shard_address(url)} refused the connection (is redis-server "
                                f"running there?): {e}") from e
    except redis.RedisError as e:  # something answered, but not as Redis does (an HTTP server, a wrong port)
        conn.close()
        raise ShardUnavailable(f"replay shard {shard_address(url)} answered, but not as Redis does (not a Redis "
                               f"server?): {type(e).__name__}: {e}") from e
    return conn


def check_shards(shard_urls: list[str], password: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Reach and authenticate every shard; raises the first shard's named error."""
    for url in shard_urls:
        connect_checked(url, password, timeout_s).close()
