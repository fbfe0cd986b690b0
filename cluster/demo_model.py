"""The built-in demo models: a character-level tokenizer and a tiny Llama, warm-started by a
recipe (cluster/warm_start.py) so that RL starts from partial competence.

Built once per settings hash into a cache OUTSIDE the repo.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cluster.warm_start import ARITHMETIC, BUILD_FORMAT, DemoModelSettings
from learner.sft import sft_warm_start

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3; pad != eos so padding is never a stop
DEFAULT_CACHE = Path.home() / ".cache" / "tidal" / "demo_model"


def build_char_tokenizer(max_length: int, characters: str = ARITHMETIC, words: tuple[str, ...] = ()
                         ) -> PreTrainedTokenizerFast:
    """One token per character, plus `words` as whole tokens (tool tags); BOS is prepended to every
    encoded text, EOS ends answers."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words, *characters])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # join characters back without separators
    tokenizer.add_tokens([AddedToken(word, special=False, normalized=False) for word in words])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def _llama_config(settings: DemoModelSettings, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        head_dim=settings.head_dim,
        intermediate_size=settings.intermediate_size,
        max_position_embeddings=settings.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def _build_into(folder: Path, settings: DemoModelSettings) -> None:
    recipe = settings.warm_start
    tokenizer = build_char_tokenizer(settings.max_position_embeddings, recipe.characters, recipe.words)
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(_llama_config(settings, tokenizer))
    metrics = {}
    for index, phase in enumerate(recipe.phases(np.random.default_rng(settings.seed))):
        result = sft_warm_start(model, tokenizer, phase.examples, phase.steps, phase.lr, settings.sft_batch_size,
                                settings.seed + index)
        metrics |= {key.replace("sft/", f"sft/{phase.name}_"): value for key, value in result.items()}
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    info = {"settings": settings.model_dump(), "sft": metrics, "build_format": BUILD_FORMAT}
    (folder / "tidal_demo.json").write_text(json.dumps(info, indent=2))


def build_demo_model(
    cache_dir: Path | str | None = None, seed: int = 0, settings: DemoModelSettings | None = None
) -> Path:
    """Return the folder of the demo model (a LlamaForCausalLM with its tokenizer), building
    it on first use. The folder name is a hash of the settings; an existing folder is reused."""
    settings = (settings or DemoModelSettings()).model_copy(update={"seed": seed})
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE
    target = cache_dir / f"demo-{settings.cache_key()}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        _build_into(staging, settings)
        os.rename(staging, target)  # atomic: a folder under the final name is always complete
    except OSError:
        if not target.is_dir():  # not a lost race with a concurrent builder: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
