"""Typed errors of the environment package: each names the bad value."""


class EnvError(ValueError):
    """Base class of every error the envs package raises."""


class UnknownNameError(EnvError):
    """A registry lookup missed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid)) or '(none)'}")
        self.name = name
        self.valid = sorted(valid)


class EpisodeStateError(EnvError):
    """An env method was called out of order (step before reset, or after done)."""
