"""Tidal's replay service: a sharded, Redis-backed, prioritized replay of groups (Reverb semantics)."""

from buffer import errors
from buffer.client import ReplayClient
from buffer.codec import decode_group, encode_group
from buffer.config import ReplayConfig, SuccessStoreConfig
from buffer.errors import (CodecError, ConfigMismatchError, InsecureShardError, RateLimiterTimeout, ReplayError,
                           SchemaError, ShardAuthError, ShardRefusedError, ShardTimeoutError, ShardUnavailable,
                           TableNotFoundError)
from buffer.ledger import LedgerAudit
from buffer.preflight import check_shards
from buffer.priority import learning_signal
from buffer.rate_limiters import MinSize, Queue, SampleToInsertRatio
from buffer.schema import Group, SampledGroup, Trajectory
from buffer.shards import LocalShard, start_local_shards, stop_local_shards
from buffer.stats import ReplayStats, ShardStats, render_stats_table
from buffer.table import create_table

__all__ = [
    "errors", "ReplayClient", "decode_group", "encode_group", "ReplayConfig", "SuccessStoreConfig",
    "CodecError", "ConfigMismatchError", "InsecureShardError", "RateLimiterTimeout", "ReplayError", "SchemaError",
    "ShardUnavailable", "ShardAuthError", "ShardRefusedError", "ShardTimeoutError", "TableNotFoundError",
    "LedgerAudit", "check_shards", "create_table", "learning_signal", "MinSize", "Queue", "SampleToInsertRatio",
    "Group", "SampledGroup", "Trajectory", "LocalShard", "start_local_shards", "stop_local_shards", "ReplayStats",
    "ShardStats", "render_stats_table",
]
