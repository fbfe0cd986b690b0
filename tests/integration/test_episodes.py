"""Multi-turn episodes on real parts: a rollout worker (Ray actor) with a vLLM engine (and, for the
calculator, the transformers engine too), running the calculator tool env and a chat-template
model through several turns.

Checks what the token-in / token-out contract promises: the env's observations sit in the
context as env tokens (mask 0) exactly as the env wrote them, and the behaviour logprobs the engine
returned for the model's tokens are those a transformers forward pass of the same weights
gives for the whole multi-turn context (so nothing was re-tokenized in between).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid

import numpy as np
import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.config import EnvConfig, RolloutConfig
from actors.rollout_worker import RemoteRolloutWorker
from buffer import ReplayClient, ReplayConfig, create_table, start_local_shards, stop_local_shards
from cluster.admission import RemoteAdmissionController
from cluster.demo_model import build_demo_model
from cluster.warm_start import CalculatorWarmStart, DemoModelSettings
from cluster.weight_channel import WeightChannel
from envs import CurriculumConfig
from tests.tiny_models import chat_tokenizer, save_tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    temp_dir = tempfile.mkdtemp(prefix="te", dir="/tmp")
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}})
    shards = start_local_shards(1, tmp_path_factory.mktemp("redis"))
    yield [s.url for s in shards]
    stop_local_shards(shards)
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _probe(model_path: str, env: EnvConfig, rollout: RolloutConfig, shard_urls: list[str], n: int) -> list[dict]:
    """`n` episodes of one task each (probe() leaves out failed ones: here none may fail, or the checks on
    them would pass on fewer, or none)."""
    channel = WeightChannel.remote()
    replay = ReplayConfig(namespace=f"episodes-{uuid.uuid4().hex[:8]}")
    create_table(replay, shard_urls)
    admission = RemoteAdmissionController.remote(8, 1, CurriculumConfig(), [], 0, ReplayClient(replay, shard_urls))
    worker = RemoteRolloutWorker.options(num_cpus=1).remote(
        "w0", model_path, rollout, env, replay, shard_urls, channel, admission, 0)
    try:
        probes = ray.get(worker.probe.remote(n), timeout=300)
    finally:
        ray.kill(worker)
    assert len(probes) == n, f"{n - len(probes)} of {n} episodes failed"
    return probes


def _assert_logprob_parity(model_path: str, probes: list[dict]) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    for probe in probes:
        ids = torch.tensor([probe["token_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        recomputed = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].numpy()
        p = probe["prompt_len"]
        mask = np.array(probe["loss_mask"], bool)
        assert mask.any()  # model tokens to compare
        completion = recomputed[p - 1:]  # completion token j is predicted at position p - 1 + j
        np.testing.assert_allclose(np.array(probe["logprobs"])[mask], completion[mask], atol=1e-3)


@pytest.fixture(scope="module")
def calculator_model(tmp_path_factory) -> str:
    """A warm start that always calls the tool, so that every episode has at least two turns."""
    settings = DemoModelSettings(warm_start=CalculatorWarmStart(tool_rate=1.0, num_problems=2000, steps=150),
                                 sft_batch_size=32)
    return str(build_demo_model(cache_dir=tmp_path_factory.mktemp("models"), settings=settings))


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
def test_calculator_tool_episodes(services, calculator_model, engine):
    model_path = calculator_model
    env = EnvConfig(name="calculator", params={"instructions": ""}, task_source="arithmetic",
                    task_params={"max_operand": 999})
    rollout = RolloutConfig(sampling={"max_new_tokens": 12}, limits={"max_turns": 4}, engine={"kind": engine})
    probes = _probe(model_path, env, rollout, services, 8)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    multi_turn = 0
    for probe in probes:
        completion = probe["token_ids"][probe["prompt_len"]:]
        mask = np.array(probe["loss_mask"])
        observed = [t for t, m in zip(completion, mask) if m == 0]
        if not observed:
            continue
        multi_turn += 1
        text = tokenizer.decode(observed)
        assert text.startswith("<result>") and text.endswith("</result>"), text  # the env's own words
        # Each model turn ends on EOS (or max tokens) before the env speaks: mask flips 1 -> 0 there.
        first_env = int(np.argmin(mask))
        assert mask[:first_env].all() and first_env > 0
    assert multi_turn >= 6, f"only {multi_turn} of 8 episodes called the tool"
    _assert_logprob_parity(model_path, probes)


def test_chat_template_model_through_a_multi_turn_episode_on_vllm(services, tmp_path_factory):
    tokenizer = chat_tokenizer()
    model_path = save_tiny_model(tmp_path_factory.mktemp("chat-llama"), tokenizer)
    env = EnvConfig(name="chain_arithmetic", params={"turns": 3})
    rollout = RolloutConfig(sampling={"max_new_tokens": 4}, limits={"max_turns": 3})
    probes = _probe(model_path, env, rollout, services, 4)
    for probe in probes:
        text = tokenizer.decode(probe["token_ids"][:probe["prompt_len"]])
        assert text.startswith("<|user|>") and text.endswith("<eos><|assistant|>")  # the template's first turn
        completion = probe["token_ids"][probe["prompt_len"]:]
        segments, current = [], []
        for token, generated in zip(completion, probe["loss_mask"]):
            if not generated:
                current.append(token)
            elif current:
                segments.append(tokenizer.decode(current))
                current = []
        assert len(segments) == 2  # three model turns, two env turns between them
        for segment in segments:  # each env turn is the template's continuation of the conversation
            assert segment.removeprefix("<eos>").startswith("<|user|>+") and segment.endswith("=<eos><|assistant|>")
    _assert_logprob_parity(model_path, probes)
