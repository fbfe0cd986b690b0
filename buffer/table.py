"""The replay table: its settings belong to the run that creates it, and nobody else writes them.

`create_table` is called once by the run, before any other client connects: it writes the
table's settings (capacity, selector, remover, bounds, rate limiter) into the namespace on every
shard, or, when the table already exists (a resumed run), checks that it has exactly these
settings. Every other client (rollout workers, learners, `tidal replay stats`, any observer)
connects by address and namespace, reads the settings, and can never change them; a client that
expects other settings gets a `ConfigMismatchError` naming the field.
"""

from __future__ import annotations

from buffer.config import ReplayConfig
from buffer.errors import ConfigMismatchError
from buffer.preflight import connect_checked, shard_address
from buffer.scripts import script_source
from buffer.selectors import SELECTORS


def table_fields(config: ReplayConfig) -> dict[str, str]:
    """The settings the shard-side scripts read, as stored in the namespace's config hash."""
    limiter = config.rate_limiter.params()
    base = 1 << max(config.capacity_per_shard - 1, 0).bit_length()  # sum-tree leaves: next power of two
    return {
        "base": str(base), "capacity": str(config.capacity_per_shard), "selector": config.selector,
        "alpha": repr(config.alpha), "remover": config.remover, "max_times_sampled": str(config.max_times_sampled),
        "max_staleness": str(config.max_staleness), "spi": repr(limiter.samples_per_insert),
        "min_size": str(limiter.min_size_to_sample), "min_diff": repr(limiter.min_diff),
        "max_diff": repr(limiter.max_diff), "dedup_ttl_s": str(config.dedup_ttl_s),
        "skip_zero_signal": str(int(not SELECTORS.get(config.selector).stores_zero_signal)),
    }


def differences(stored: dict[str, str], expected: dict[str, str]) -> list[str]:
    """`field: stored X, expected Y` for each setting that differs."""
    return [f"{name}: stored {stored.get(name)!r}, expected {value!r}"
            for name, value in expected.items() if stored.get(name) != value]


def create_table(config: ReplayConfig, shard_urls: list[str]) -> None:
    """Create the run's table on every shard (or check the existing one is the same)."""
    fields = table_fields(config)
    flat = [config.namespace] + [item for pair in fields.items() for item in pair]
    password = config.password.get_secret_value() if config.password else None
    for url in shard_urls:
        conn = connect_checked(url, password)
        try:
            reply = conn.eval(script_source("create"), 0, *flat)
        finally:
            conn.close()
        stored = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
        mismatched = differences(stored, fields)
        if mismatched:
            raise ConfigMismatchError(f"the replay table {config.namespace!r} on {shard_address(url)} exists with "
                                      f"other settings ({'; '.join(mismatched)}): resume with the run's own replay "
                                      "settings, or use another namespace")

