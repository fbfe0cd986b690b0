"""Tiny models and tokenizers the tests build for themselves (no model hub is reachable)."""

from __future__ import annotations

from pathlib import Path

from cluster.demo_model import build_char_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHAT_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")


def chat_tokenizer(max_length: int = 64):
    """The demo's character tokenizer with role tokens (special) and a chat template whose turns
    end with EOS, like the chat models users bring."""
    tokenizer = build_char_tokenizer(max_length)
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_ROLES)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_model(folder: Path | str, tokenizer=None) -> str:
    """A random Llama (hidden 64, 2 layers, head_dim 32: vLLM's CPU attention needs >= 32, tied
    embeddings) with `tokenizer` (default: the demo's character tokenizer), saved to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_char_tokenizer(64)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=32, intermediate_size=128, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)
