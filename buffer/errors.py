"""Typed errors of the replay service (one place, as in Reverb's errors.py)."""


class ReplayError(Exception):
    """Base class of every error the replay service raises."""


class SchemaError(ReplayError, ValueError):
    """A trajectory or group violates the schema (shapes, lengths, types)."""


class CodecError(ReplayError, ValueError):
    """A payload could not be decoded: corrupted, truncated, or of another schema version."""


class RateLimiterTimeout(ReplayError, TimeoutError):
    """An insert or sample stayed blocked by a shard's rate limiter past its timeout."""


class ShardUnavailable(ReplayError, ConnectionError):
    """No shard could take the operation (all down, or the one holding the data is down)."""


class ShardRefusedError(ShardUnavailable):
    """Nothing listens at a shard's address."""


class ShardAuthError(ShardUnavailable):
    """A shard rejected (or requires) the password."""


class ShardTimeoutError(ShardUnavailable):
    """A shard did not answer in time (unreachable host, or a server too busy to reply)."""


class TableNotFoundError(ShardUnavailable):
    """A shard has no replay table under the namespace (the run creates it; a fresh shard lost it)."""


class InsecureShardError(ReplayError, ValueError):
    """A non-loopback Redis address without a password."""


class ConfigMismatchError(ReplayError, ValueError):
    """The table on a shard has other settings than the client expects (or the run was created with)."""
