"""Typed errors of the environment package: each names the bad value."""


class EnvError(ValueError):
    """Base class of every error the envs package raises."""


class EpisodeStateError(EnvError):
    """An env method was called out of order (step before reset, or after done)."""


class InvalidStepResult(EnvError):
    """An env answered with something the worker cannot train on: a reward, reward part, role reward
    or metric that is not a finite number, or an observation that is not an Observation."""
