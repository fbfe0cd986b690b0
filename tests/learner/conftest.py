"""Fixtures of the learner's engine tests: a tiny random Llama with the demo's character
tokenizer in a temporary folder, and a one-rank gloo process group for in-process engines."""

from __future__ import annotations

import os

import pytest

from buffer.ports import free_port
from tests.tiny_models import save_tiny_model

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed reads it at import


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def single_rank() -> None:
    """This test process as rank 0 of a world of 1 (DeepSpeed needs a process group)."""
    from learner.engine import init_process_group

    init_process_group(0, 1, "127.0.0.1", free_port())
