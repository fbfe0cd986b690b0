"""The built-in demo model: a character-level tokenizer and a tiny Llama, warm-started on
addition so that RL starts from partial competence.

The warm start has two phases. Clean labels first: the model learns to add (noisy labels
from the start slow that down several-fold). Then noisy labels: with probability
label_noise the answer is replaced by correct +- 1..noise_max_offset, so the model learns a
spread answer distribution whose mode is right. Greedy decoding is then mostly correct
while temperature-1 samples are right far less often, and RL has room to sharpen it.
Built once per settings hash into a cache OUTSIDE the repo.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from envs.base import Task
from envs.rewards import correctness
from envs.tasks import ArithmeticTaskConfig, ArithmeticTasks
from learner.sft import SFTExample, sft_warm_start

BUILD_FORMAT = 1  # bump when the build recipe changes in a way the settings do not capture
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3; pad != eos so padding is never a stop
CHARACTERS = "0123456789+-= "
DEFAULT_CACHE = Path.home() / ".cache" / "tidal" / "demo_model"


class DemoModelSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(64, ge=8)
    """64 x 2 layers learns addition in ~400 steps; 128 x 4 is ~3x slower per step on 2 cores."""
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    head_dim: int = Field(32, ge=32)
    """vLLM's CPU attention supports head sizes >= 32 only, so it is set apart from hidden_size."""
    intermediate_size: int = Field(192, ge=8)
    max_position_embeddings: int = Field(64, ge=16)
    """Prompts are <= 8 tokens and answers <= 5: 64 leaves room for multi-turn chains."""
    max_operand: int = Field(49, ge=1, le=999)
    """Operand range of the SFT data; must match the arithmetic task source of the run."""
    label_noise: float = Field(0.5, ge=0.0, lt=1.0)
    """Probability that an SFT label is replaced by a nearby wrong answer."""
    noise_max_offset: int = Field(3, ge=1)
    """Wrong labels are correct +- 1..noise_max_offset."""
    noisy_copies: int = Field(8, ge=1)
    """Each training problem appears this many times in the noisy phase, each with its own label draw."""
    clean_steps: int = Field(400, ge=1)
    clean_lr: float = Field(3e-3, gt=0.0)
    noisy_steps: int = Field(200, ge=1)
    noisy_lr: float = Field(1e-3, gt=0.0)
    sft_batch_size: int = Field(128, ge=1)
    seed: int = 0

    def cache_key(self) -> str:
        payload = json.dumps({"format": BUILD_FORMAT, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_char_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """One token per character; BOS is prepended to every encoded text, EOS ends answers."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # join characters back without separators
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


def noisy_sft_examples(
    tasks: Sequence[Task], label_noise: float, max_offset: int, copies: int, rng: np.random.Generator
) -> list[SFTExample]:
    """`copies` examples per task; each label is correct +- 1..max_offset with probability label_noise."""
    examples = []
    for task in tasks:
        correct = int(task.answer)
        for _ in range(copies):
            answer = correct
            if rng.random() < label_noise:
                offset = int(rng.integers(1, max_offset + 1))
                answer = correct - offset if rng.random() < 0.5 and correct >= offset else correct + offset
            examples.append(SFTExample(prompt=task.prompt, completion=str(answer)))
    return examples


def _build_into(folder: Path, settings: DemoModelSettings) -> None:
    tokenizer = build_char_tokenizer(settings.max_position_embeddings)
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(_llama_config(settings, tokenizer))
    tasks = ArithmeticTasks(ArithmeticTaskConfig(max_operand=settings.max_operand)).train_tasks()
    rng = np.random.default_rng(settings.seed)
    clean = [SFTExample(prompt=task.prompt, completion=task.answer) for task in tasks]
    noisy = noisy_sft_examples(tasks, settings.label_noise, settings.noise_max_offset, settings.noisy_copies, rng)
    batch, seed = settings.sft_batch_size, settings.seed
    clean_metrics = sft_warm_start(model, tokenizer, clean, settings.clean_steps, settings.clean_lr, batch, seed)
    noisy_metrics = sft_warm_start(model, tokenizer, noisy, settings.noisy_steps, settings.noisy_lr, batch, seed + 1)
    metrics = {k.replace("sft/", "sft/clean_"): v for k, v in clean_metrics.items()}
    metrics |= {k.replace("sft/", "sft/noisy_"): v for k, v in noisy_metrics.items()}
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


@torch.no_grad()
def answer_accuracy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, tasks: Sequence[Task], greedy: bool, seed: int = 0
) -> float:
    """Fraction of `tasks` answered exactly: one greedy decode or one temperature-1 sample each."""
    torch.manual_seed(seed)
    batch = tokenizer([t.prompt for t in tasks], return_tensors="pt", padding=True, padding_side="left")
    sampling = {} if greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    output = model.generate(**batch, do_sample=not greedy, max_new_tokens=5, **sampling)
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return float(np.mean([correctness(task, text, {}) for text, task in zip(texts, tasks)]))


def main() -> None:
    """Build (or reuse) the demo model and print its held-out accuracy after the warm start."""
    start = time.perf_counter()
    path = build_demo_model()
    build_seconds = time.perf_counter() - start
    model = LlamaForCausalLM.from_pretrained(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    info = json.loads((path / "tidal_demo.json").read_text())
    settings = DemoModelSettings(**info["settings"])
    held_out = ArithmeticTasks(ArithmeticTaskConfig(max_operand=settings.max_operand)).eval_tasks()
    greedy = answer_accuracy(model, tokenizer, held_out, greedy=True)
    sampled = answer_accuracy(model, tokenizer, held_out, greedy=False)
    report = {"path": str(path), "build_seconds": build_seconds, "greedy_acc": greedy, "sampled_acc": sampled}
    print(json.dumps(report | info["sft"]))


if __name__ == "__main__":
    main()
