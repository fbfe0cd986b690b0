import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from cluster.demo_model import build_char_tokenizer, build_demo_model
from cluster.warm_start import AdditionWarmStart, CalculatorWarmStart, DemoModelSettings, noisy_sft_examples
from envs import make_env
from envs.tasks import addition_task
from learner.sft import IGNORE_INDEX, SFTExample, sft_warm_start, tokenize_examples

TINY = DemoModelSettings(warm_start=AdditionWarmStart(clean_steps=2, noisy_steps=2, noisy_copies=1), sft_batch_size=8)


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    return build_demo_model(cache_dir=tmp_path_factory.mktemp("cache"), seed=0, settings=TINY)


def test_demo_model_loads_back_with_auto_classes(demo_path):
    tokenizer = AutoTokenizer.from_pretrained(demo_path)
    model = AutoModelForCausalLM.from_pretrained(demo_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("23+45=")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 7  # BOS + one token per character
    assert tokenizer.decode(ids, skip_special_tokens=True) == "23+45="
    assert tokenizer.decode([*tokenizer("68", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]) == "68<eos>"
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 7, len(tokenizer))
    files = {p.name for p in demo_path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tidal_demo.json"} <= files
    config = json.loads((demo_path / "config.json").read_text())
    assert config["head_dim"] == 32 and config["max_position_embeddings"] == 64  # vLLM CPU needs head_dim >= 32


def test_demo_model_build_is_cached(demo_path):
    stamp = (demo_path / "model.safetensors").stat().st_mtime_ns
    again = build_demo_model(cache_dir=demo_path.parent, seed=0, settings=TINY)
    assert again == demo_path and (again / "model.safetensors").stat().st_mtime_ns == stamp
    other = build_demo_model(cache_dir=demo_path.parent, seed=1, settings=TINY)
    assert other != demo_path  # a different seed is a different cache entry
    assert not [p for p in demo_path.parent.iterdir() if p.name.startswith(".building-")]


def test_noisy_labels_are_near_the_answer():
    tasks = [addition_task(20, 20)] * 2000
    clean = noisy_sft_examples(tasks[:10], label_noise=0.0, max_offset=3, copies=2, rng=np.random.default_rng(0))
    assert [e.completion for e in clean] == ["40"] * 20
    noisy = noisy_sft_examples(tasks, label_noise=0.5, max_offset=3, copies=1, rng=np.random.default_rng(0))
    answers = np.array([int(e.completion) for e in noisy])
    assert set(np.abs(answers - 40)) == {0, 1, 2, 3}
    assert np.mean(answers == 40) == pytest.approx(0.5, abs=0.04)


def test_tokenize_examples_masks_prompt_and_padding():
    tokenizer = build_char_tokenizer(64)
    ids, mask, labels = tokenize_examples(tokenizer, [SFTExample("1+2=", "3"), SFTExample("10+20=", "30")])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    digit = tokenizer.convert_tokens_to_ids
    assert labels[0].tolist() == [IGNORE_INDEX] * 5 + [digit("3"), eos] + [IGNORE_INDEX] * 3  # width 10
    assert labels[1].tolist() == [IGNORE_INDEX] * 7 + [digit("3"), digit("0"), eos]
    assert ids[0, -3:].tolist() == [pad] * 3 and mask[0].tolist() == [1] * 7 + [0] * 3


def test_sft_lowers_the_completion_loss():
    tokenizer = build_char_tokenizer(64)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=64, max_position_embeddings=64, head_dim=32)
    model = LlamaForCausalLM(config)
    examples = [SFTExample("1+2=", "3"), SFTExample("4+4=", "8")]
    metrics = sft_warm_start(model, tokenizer, examples, steps=40, lr=1e-2, batch_size=4, seed=0)
    assert metrics["sft/loss_final"] < 0.2 * metrics["sft/loss_first"]
    with pytest.raises(ValueError, match="steps >= 1"):
        sft_warm_start(model, tokenizer, examples, steps=0, lr=1e-2, batch_size=4, seed=0)


def test_multi_turn_examples_train_on_model_turns_only():
    recipe = CalculatorWarmStart()
    tokenizer = build_char_tokenizer(64, recipe.characters, recipe.words)
    example = SFTExample("12+30=", "<calc>12+30</calc>", (("<result>42</result>", "42"),))
    ids, _, labels = tokenize_examples(tokenizer, [example])
    token = tokenizer.convert_tokens_to_ids
    eos, ignore = tokenizer.eos_token_id, IGNORE_INDEX
    call = [token("<calc>"), *map(token, "12+30"), token("</calc>"), eos]
    result = [token("<result>"), token("4"), token("2"), token("</result>")]
    answer = [token("4"), token("2"), eos]
    assert ids[0].tolist() == [tokenizer.bos_token_id, *map(token, "12+30="), *call, *result, *answer]
    assert labels[0].tolist() == [ignore] * 7 + call + [ignore] * 4 + answer


def test_calculator_recipe_speaks_the_calculator_envs_syntax():
    """The warm start's tool episodes are exactly what the env answers, turn by turn."""
    phase, = CalculatorWarmStart(num_problems=200, tool_rate=0.5).phases(np.random.default_rng(0))
    tool = [e for e in phase.examples if e.turns]
    assert 60 < len(tool) < 140
    env = make_env("calculator", instructions="")
    for example in tool[:20]:
        task = addition_task(*map(int, example.prompt.rstrip("=").split("+")))
        assert env.reset(task).text == example.prompt
        (observation, answer), = example.turns
        assert env.step(example.completion).observation.text == observation
        assert env.step(answer).reward_parts["correctness"] == 1.0
