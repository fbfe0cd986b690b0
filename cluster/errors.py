"""Typed errors of the control plane: each names what was wrong (a key, an address, a component)."""


class ConfigError(ValueError):
    """The run configuration is invalid; the message names the offending key or path."""


class ControlError(ValueError):
    """A control-plane command could not reach or act on a run; the message says which and why."""


class RunNotFoundError(ControlError):
    """No Ray cluster, or no live Tidal run on it."""


class RunFailed(RuntimeError):
    """The run cannot go on; the message says what failed and how to resume."""
