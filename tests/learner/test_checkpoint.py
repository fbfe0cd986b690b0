"""Checkpoints: a resumed engine continues exactly like an uninterrupted one, and the Hugging Face
export loads in vLLM and transformers with the learner's own logprobs (fp32, one rank, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from buffer import Group, SampledGroup, Trajectory
from learner.batch import build_batch
from learner.config import LearnerConfig, OptimConfig
from learner.engine import CheckpointNotFoundError, PolicyEngine
from learner.loss_config import PolicyLossConfig
from learner.step import train_step

# Warm-up makes the LR scheduler state matter; Adam's moments make the optimizer state matter.
CFG = LearnerConfig(zero_stage=2, dtype="float32", micro_batch_tokens=32, optim=OptimConfig(lr=1e-3, warmup_steps=4))
LOSS = PolicyLossConfig()


def _batch(step: int):
    rng = np.random.default_rng(zlib.crc32(f"step-{step}".encode()))
    trajectories = [Trajectory(prompt_ids=rng.integers(4, 18, 3), completion_ids=rng.integers(4, 18, 6),
                               loss_mask=np.ones(6), behavior_logprobs=np.full(6, -2.9),
                               policy_versions=np.full(6, step), reward=float(i % 2)) for i in range(4)]
    group = Group(f"w:{step}", "t", "c", 0.0, trajectories)
    return build_batch([SampledGroup(group, 1.0, 1.0, 1, 0)], [group.rewards - group.rewards.mean()], pad_id=0)


def _train(engine: PolicyEngine, steps: range) -> list[dict]:
    return [train_step(engine, _batch(step), LOSS, CFG.micro_batch_tokens)[0] for step in steps]


def test_a_resumed_engine_continues_like_an_uninterrupted_one(tiny_model, single_rank, tmp_path):
    uninterrupted = PolicyEngine(tiny_model, CFG, total_steps=10, world_size=1)
    _train(uninterrupted, range(2))
    uninterrupted.save_checkpoint(tmp_path / "ckpt", "step2", {"policy_version": 2})
    expected = _train(uninterrupted, range(2, 4))

    resumed = PolicyEngine(tiny_model, CFG, total_steps=10, world_size=1)
    assert resumed.load_checkpoint(tmp_path / "ckpt")["policy_version"] == 2  # the client state comes back
    assert resumed.engine.global_steps == 2 and resumed.lr == pytest.approx(uninterrupted_lr_at(2))
    got = _train(resumed, range(2, 4))
    for ran, again in zip(expected, got):
        assert again["loss"] == pytest.approx(ran["loss"], rel=1e-6, abs=1e-9)
        assert again["grad_norm"] == pytest.approx(ran["grad_norm"], rel=1e-6)
    final, final_resumed = uninterrupted.named_weights(), resumed.named_weights()
    for name, weight in final.items():
        torch.testing.assert_close(final_resumed[name], weight, rtol=0, atol=1e-7)


def uninterrupted_lr_at(step: int) -> float:
    return CFG.optim.lr * (step + 1) / CFG.optim.warmup_steps  # linear warm-up, as lr_multiplier


def test_loading_from_an_empty_directory_names_it(tiny_model, single_rank, tmp_path):
    engine = PolicyEngine(tiny_model, CFG, total_steps=10, world_size=1)
    with pytest.raises(CheckpointNotFoundError, match=str(tmp_path)):
        engine.load_checkpoint(tmp_path)


VLLM_SCRIPT = """
import json, sys
from actors.engine import VLLMEngine
from actors.engine_config import EngineConfig
from actors.sampling import SamplingConfig
engine = VLLMEngine(sys.argv[1], EngineConfig(), seed=3)
prompts = json.loads(sys.argv[2])
for i, prompt in enumerate(prompts):
    engine.add(str(i), prompt, SamplingConfig(), max_tokens=8, n=1)
finished = {}
while engine.has_unfinished():
    finished.update({f.request_id: f.samples[0] for f in engine.step()})
out = [finished[str(i)] for i in range(len(prompts))]
print("RESULT" + json.dumps([[c.token_ids, c.logprobs] for c in out]))
"""


@pytest.mark.integration
def test_the_hf_export_loads_in_vllm_and_transformers_with_the_learners_logprobs(tiny_model, single_rank, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = PolicyEngine(tiny_model, CFG, total_steps=10, world_size=1)
    _train(engine, range(2))  # exported weights must be the trained ones, not the starting model's
    export = tmp_path / "hf"
    engine.export_hf(export, tiny_model)
    assert (export / "model.safetensors").is_file() and (export / "tokenizer.json").is_file()

    tokenizer = AutoTokenizer.from_pretrained(export)
    prompts = [tokenizer(text)["input_ids"] for text in ["12+7=", "3+45=", "40+9="]]
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    probe = torch.tensor([prompts[0]])
    with torch.no_grad():
        hf_logprobs = torch.log_softmax(model(probe).logits[0, :-1], -1).gather(-1, probe[0, 1:, None])[:, 0]
    learner_logprobs, _ = engine.token_logprobs(probe, torch.ones_like(probe))
    torch.testing.assert_close(hf_logprobs, learner_logprobs[0].detach(), rtol=0, atol=1e-5)
    starting = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert not torch.equal(starting.model.embed_tokens.weight, model.model.embed_tokens.weight)

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    # A separate process: vLLM sets up its own torch.distributed group, this one has DeepSpeed's.
    run = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(export), json.dumps(prompts)],
                         capture_output=True, text=True, env=env, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    completions = json.loads(run.stdout.split("RESULT", 1)[1])
    checked = 0
    for prompt, (token_ids, vllm_logprobs) in zip(prompts, completions):
        ids = torch.tensor([prompt + token_ids])
        recomputed, _ = engine.token_logprobs(ids, torch.ones_like(ids))
        learner_side = recomputed[0, len(prompt) - 1:].detach().numpy()
        np.testing.assert_allclose(vllm_logprobs, learner_side, rtol=0, atol=1e-3)
        checked += len(token_ids)
    assert checked >= 3
