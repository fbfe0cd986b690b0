"""The transformers engine against the model it wraps: logprobs, greedy tokens, stops, batching,
weight loads, and the token choice rules checked on hand-made distributions."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engine import make_engine
from actors.engine_config import EngineConfig
from actors.hf_engine import MAX_BATCH_SEQS, TransformersEngine, pick_tokens
from actors.sampling import SamplingConfig
from cluster.config import ConfigError, load_config
from tests.tiny_models import save_tiny_model

CONFIG = EngineConfig(kind="transformers")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("hf-engine-llama"))


@pytest.fixture(scope="module")
def reference(model_path):
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@pytest.fixture
def engine(model_path) -> TransformersEngine:
    return make_engine(model_path, CONFIG, seed=0)


def _prompts(model_path: str) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return [tokenizer(text)["input_ids"] for text in ("12+34=", "7+5=", "100+200+3=")]  # unequal: left padding


def _full_forward_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return [logprobs[len(prompt) - 1 + k, token].item() for k, token in enumerate(completion)]


def _run(engine, requests: dict[str, tuple[list[int], SamplingConfig, int, int]]) -> dict:
    for request_id, (prompt, sampling, max_tokens, n) in requests.items():
        engine.add(request_id, prompt, sampling, max_tokens, n)
    finished = {}
    while engine.has_unfinished():
        finished |= {f.request_id: f.samples for f in engine.step()}
    return finished


def test_sampled_logprobs_are_the_models_own_for_every_row_of_a_padded_batch(engine, model_path, reference):
    prompts = _prompts(model_path)
    finished = _run(engine, {f"r{i}": (p, SamplingConfig(), 10, 4) for i, p in enumerate(prompts)})
    assert sorted(finished) == ["r0", "r1", "r2"]
    for i, prompt in enumerate(prompts):
        assert len(finished[f"r{i}"]) == 4
        for sample in finished[f"r{i}"]:
            expected = _full_forward_logprobs(reference, prompt, sample.token_ids)
            assert sample.logprobs == pytest.approx(expected, abs=1e-4)
            assert sample.versions == [0] * len(sample.token_ids)


def test_greedy_follows_the_argmax_and_stops_at_the_limit(engine, model_path, reference):
    prompt = _prompts(model_path)[0]
    sample = _run(engine, {"g": (prompt, SamplingConfig(temperature=0), 6, 1)})["g"][0]
    expected, context = [], list(prompt)
    with torch.no_grad():
        for _ in range(len(sample.token_ids)):
            expected.append(int(reference(torch.tensor([context])).logits[0, -1].argmax()))
            context.append(expected[-1])
    assert sample.token_ids == expected
    eos = AutoTokenizer.from_pretrained(model_path).eos_token_id
    assert sample.finish_reason == ("stop" if expected[-1] == eos else "length")
    assert len(sample.token_ids) == 6 or expected[-1] == eos


def test_a_stop_string_ends_the_sample_on_the_token_that_completes_it(model_path):
    engine = make_engine(model_path, CONFIG, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    free = _run(engine, {"free": (_prompts(model_path)[0], SamplingConfig(temperature=0), 8, 1)})["free"][0]
    stop = tokenizer.decode(free.token_ids[1:3])  # greedy is deterministic: the same tokens come again
    stopped = _run(engine, {"s": (_prompts(model_path)[0], SamplingConfig(temperature=0, stop=[stop]), 8, 1)})["s"][0]
    assert stop in tokenizer.decode(stopped.token_ids)
    assert stop not in tokenizer.decode(stopped.token_ids[:-1])
    assert stopped.finish_reason == "stop"


def test_a_step_takes_at_most_max_batch_seqs_and_the_rest_waits(engine, model_path):
    prompt = _prompts(model_path)[1]
    for i in range(3):
        engine.add(f"big{i}", prompt, SamplingConfig(), 2, MAX_BATCH_SEQS // 2)
    assert [f.request_id for f in engine.step()] == ["big0", "big1"]
    assert engine.has_unfinished()
    assert [f.request_id for f in engine.step()] == ["big2"]
    assert not engine.has_unfinished()


def test_samplings_in_one_step_are_generated_apart(engine, model_path, reference):
    prompt = _prompts(model_path)[0]
    alone = _run(make_engine(model_path, CONFIG, seed=0), {"g": (prompt, SamplingConfig(temperature=0), 5, 1)})["g"][0]
    finished = _run(engine, {"greedy": (prompt, SamplingConfig(temperature=0), 5, 3),
                             "sampled": (prompt, SamplingConfig(), 5, 3)})
    assert [s.token_ids for s in finished["greedy"]] == [alone.token_ids] * 3
    assert len(finished["sampled"]) == 3
    for sample in finished["sampled"]:
        assert sample.logprobs == pytest.approx(_full_forward_logprobs(reference, prompt, sample.token_ids), abs=1e-4)


def test_rows_of_one_batch_end_on_their_own_limit_or_eos(engine, model_path):
    prompts = _prompts(model_path)
    first = _run(make_engine(model_path, CONFIG), {"g": (prompts[0], SamplingConfig(temperature=0), 1, 1)})["g"][0]
    engine._eos = {first.token_ids[0]}  # the token prompt 0 answers first ends a sample: one row stops at once
    limits = {"r0": 6, "r1": 2, "r2": 5}
    finished = _run(engine, {rid: (prompts[i], SamplingConfig(temperature=0), limits[rid], 2)
                             for i, rid in enumerate(limits)})
    assert [s.token_ids for s in finished["r0"]] == [first.token_ids] * 2
    assert {s.finish_reason for s in finished["r0"]} == {"stop"}
    for rid, samples in finished.items():
        for sample in samples:
            ends_on_eos = sample.token_ids[-1] in engine._eos
            assert not engine._eos & set(sample.token_ids[:-1])  # nothing is generated after an EOS
            assert sample.finish_reason == ("stop" if ends_on_eos else "length")
            assert len(sample.token_ids) == limits[rid] or ends_on_eos


def test_loaded_weights_change_the_samples_and_their_version(engine, model_path, reference):
    prompt = _prompts(model_path)[0]
    before = _run(engine, {"a": (prompt, SamplingConfig(temperature=0), 6, 1)})["a"][0]
    state = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    state["model.norm.weight"].mul_(3.0)  # not a tied weight: a tied one is written again under its other name
    engine.load_weights(state.items(), version=7)
    after = _run(engine, {"b": (prompt, SamplingConfig(temperature=0), 6, 1)})["b"][0]
    assert after.versions == [7] * len(after.token_ids)
    changed = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    changed.load_state_dict(state)
    assert after.logprobs == pytest.approx(_full_forward_logprobs(changed, prompt, after.token_ids), abs=1e-4)
    assert (after.token_ids, after.logprobs) != (before.token_ids, before.logprobs)


@pytest.mark.parametrize("extra", [("not_a_parameter", torch.zeros(1)), ("model.norm.weight", torch.zeros(1))])
def test_unknown_or_misshapen_weights_are_refused_before_any_is_copied(engine, reference, extra):
    state = {name: tensor.clone() + 1 for name, tensor in reference.state_dict().items()}
    weights = [*state.items(), extra] if extra[0] not in state else [*{**state, extra[0]: extra[1]}.items()]
    with pytest.raises(ValueError, match=extra[0]):
        engine.load_weights(weights, version=1)
    assert engine.version == 0
    assert torch.equal(engine.model.state_dict()["model.embed_tokens.weight"],
                       reference.state_dict()["model.embed_tokens.weight"])


def test_tied_embeddings_take_the_new_weights_under_both_names(engine, model_path, reference):
    prompt = _prompts(model_path)[0]
    state = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    assert "lm_head.weight" in state  # the learner publishes a tied weight under both of its names
    embeddings = torch.randn(state["lm_head.weight"].shape, generator=torch.Generator().manual_seed(7))
    state["lm_head.weight"], state["model.embed_tokens.weight"] = embeddings, embeddings.clone()
    engine.load_weights(state.items(), version=2)
    sample = _run(engine, {"t": (prompt, SamplingConfig(), 6, 1)})["t"][0]
    changed = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    changed.load_state_dict(state)
    assert sample.logprobs == pytest.approx(_full_forward_logprobs(changed, prompt, sample.token_ids), abs=1e-4)
    assert sample.logprobs != pytest.approx(_full_forward_logprobs(reference, prompt, sample.token_ids), abs=1e-3)


def test_abort_and_overlong_requests(engine, model_path):
    prompt = _prompts(model_path)[0]
    engine.add("x", prompt, SamplingConfig(), 4, 2)
    engine.abort(["x", "never-added"])
    assert not engine.has_unfinished()
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add("long", prompt, SamplingConfig(), engine.max_model_len, 1)
    with pytest.raises(ValueError, match="repetition_penalty"):
        engine.add("rp", prompt, SamplingConfig(repetition_penalty=1.2), 4, 1)
    for bad in (([], 4, 1), (prompt, 0, 1), (prompt, 4, 0)):
        with pytest.raises(ValueError, match="needs a prompt"):
            engine.add("bad", bad[0], SamplingConfig(), bad[1], bad[2])
    assert not engine.has_unfinished()


def _frequencies(logits: list[float], sampling: SamplingConfig, draws: int = 4000) -> torch.Tensor:
    rows = torch.tensor([logits]).log().expand(draws, -1)  # `logits` given as probabilities
    picked = pick_tokens(rows, sampling, torch.Generator().manual_seed(0))
    return torch.bincount(picked, minlength=len(logits)).float() / draws


def test_pick_tokens_restricts_the_distribution_as_each_setting_says():
    probs = [0.5, 0.3, 0.15, 0.05]
    assert _frequencies(probs, SamplingConfig()).tolist() == pytest.approx(probs, abs=0.03)
    # top_p 0.6: the tokens before which less than 0.6 of the mass lies: 0 and 1, renormalised to 5/8, 3/8
    assert _frequencies(probs, SamplingConfig(top_p=0.6)).tolist() == pytest.approx([0.625, 0.375, 0, 0], abs=0.03)
    assert _frequencies(probs, SamplingConfig(top_k=3)).tolist() == pytest.approx([0.526, 0.316, 0.158, 0], abs=0.03)
    # min_p 0.4: tokens with at least 0.4 x the top probability (0.2): 0 and 1
    assert _frequencies(probs, SamplingConfig(min_p=0.4)).tolist() == pytest.approx([0.625, 0.375, 0, 0], abs=0.03)
    # temperature 0.5 squares the odds: 0.25 : 0.09 : 0.0225 : 0.0025
    squared = torch.tensor(probs) ** 2
    assert _frequencies(probs, SamplingConfig(temperature=0.5)).tolist() == pytest.approx(
        (squared / squared.sum()).tolist(), abs=0.03)
    assert _frequencies(probs, SamplingConfig(temperature=0), draws=5).tolist() == [1, 0, 0, 0]
    # min_p 0.5 keeps 0.4 and 0.3 (>= 0.2), renormalised to 4/7 and 3/7; top_p 0.5 then measures that:
    # 4/7 already lies before token 1, so only token 0 is left
    assert _frequencies([0.4, 0.3, 0.1, 0.1, 0.1], SamplingConfig(min_p=0.5, top_p=0.5)).tolist() == [1, 0, 0, 0, 0]


def test_engine_config_names_what_does_not_fit_the_kind(tmp_path):
    with pytest.raises(ValidationError, match="kind is 'transformers'"):
        EngineConfig(kind="transformers", vllm={"max_num_seqs": 8})
    with pytest.raises(ValidationError, match="kind"):
        EngineConfig(kind="sglang")
    with pytest.raises(ConfigError, match="repetition_penalty needs engine.kind 'vllm'"):
        load_config(None, {"rollout": {"engine": {"kind": "transformers"}, "sampling": {"repetition_penalty": 1.1}}})
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs rollout.engine.kind 'vllm'"):
        load_config(None, {"rollout": {"engine": {"kind": "transformers"}}, "placement": {"tensor_parallel_size": 2}})
    with pytest.raises(ConfigError, match="num_gpus=1.0 needs rollout.engine.kind 'vllm'"):
        load_config(None, {"rollout": {"engine": {"kind": "transformers"}}, "placement": {"rollout": {"num_gpus": 1}}})
    with pytest.raises(ValidationError, match="dtype 'float8'"):
        EngineConfig(kind="transformers", dtype="float8")
