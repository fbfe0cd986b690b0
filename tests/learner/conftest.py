"""Fixtures of the learner's engine tests: a tiny random Llama with the demo's character
tokenizer in a temporary folder, and a one-rank gloo process group for in-process engines."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed reads it at import


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny_model(folder) -> str:
    """hidden 64, 2 layers, head_dim 32 (vLLM's CPU attention needs >= 32), tied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cluster.demo_model import build_char_tokenizer

    tokenizer = build_char_tokenizer(64)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=32, intermediate_size=128, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def single_rank() -> None:
    """This test process as rank 0 of a world of 1 (DeepSpeed needs a process group)."""
    from learner.engine import init_process_group

    init_process_group(0, 1, "127.0.0.1", free_port())
