"""Observations to tokens: plain text, and chat templates rendered as a continuation of the
conversation (never re-rendering the past)."""

from __future__ import annotations

import time

import pytest

from actors.episode import EpisodeLimits
from actors.episode_loop import EpisodeLoop
from actors.rendering import ChatRenderer, PlainRenderer, RenderError, make_renderer
from actors.sampling import SamplingConfig
from envs import EpisodeErrorCounter, Observation, SafeEnv, Task, make_env
from tests.actors.conftest import ScriptedEngine
from tests.tiny_models import chat_tokenizer

TASK = Task(task_id="add/23+45", category="carries=0", prompt="23+45=", answer="68")


@pytest.fixture(scope="module")
def chat():
    return chat_tokenizer()


def test_renderer_follows_the_tokenizer(char_tokenizer, chat):
    assert isinstance(make_renderer(char_tokenizer), PlainRenderer)
    assert isinstance(make_renderer(chat), ChatRenderer)


def test_plain_first_observation_has_bos_and_later_ones_do_not(char_tokenizer):
    renderer = PlainRenderer(char_tokenizer)
    assert renderer.first(Observation("1+2="))[0] == char_tokenizer.bos_token_id
    assert renderer.next(Observation("+3="), last_token=2) == char_tokenizer("+3=", add_special_tokens=False)["input_ids"]


def test_chat_first_observation_is_the_template_with_the_generation_prompt(chat):
    renderer = ChatRenderer(chat)
    messages = [{"role": "system", "content": "0"}, {"role": "user", "content": "1+2="}]
    expected = chat.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.decode(renderer.first(Observation("", messages=messages))) == expected == \
        "<|system|>0<eos><|user|>1+2=<eos><|assistant|>"
    assert chat.decode(renderer.first(Observation("1+2="))) == "<|user|>1+2=<eos><|assistant|>"


def test_chat_continuation_after_a_turn_with_and_without_its_end_token(chat):
    renderer = ChatRenderer(chat)
    tool = Observation("", messages=[{"role": "tool", "content": "3"}])
    after_eos = renderer.next(tool, last_token=chat.eos_token_id)
    assert chat.decode(after_eos) == "<|tool|>3<eos><|assistant|>"
    cut_off = renderer.next(tool, last_token=chat.convert_tokens_to_ids("7"))  # a turn cut at max_tokens
    assert chat.decode(cut_off) == "<eos><|tool|>3<eos><|assistant|>"


def test_a_template_that_rewrites_earlier_turns_is_refused(chat):
    chat = chat_tokenizer()
    chat.chat_template = "{{ messages | length }}" + chat.chat_template  # the header changes with each message
    with pytest.raises(RenderError, match="re-renders earlier turns"):
        ChatRenderer(chat).next(Observation("+3="), last_token=chat.eos_token_id)


def test_a_multi_turn_chat_episode_is_the_conversation_the_template_would_render(chat):
    """Token for token, the context equals the template's rendering of the whole conversation,
    although each observation was rendered once, on its own."""
    replies = {1: "68", 2: "71", 3: "9"}

    def reply(prompt, index):
        turn = chat.decode(prompt).count("<|assistant|>")
        return chat(replies[turn], add_special_tokens=False)["input_ids"]

    errors = EpisodeErrorCounter()
    loop = EpisodeLoop(ScriptedEngine(reply), ChatRenderer(chat), EpisodeLimits(max_turns=3), errors)
    done = []
    loop.start("g", TASK, [SafeEnv(make_env("chain_arithmetic", turns=3), errors)], SamplingConfig(), done.append)
    deadline = time.monotonic() + 10
    while not loop.idle:
        loop.pump(wait_s=0.01)
        assert time.monotonic() < deadline
    [trajectory] = done[0].episodes[0].trajectories()
    context = list(trajectory.prompt_ids) + list(trajectory.completion_ids)
    text = chat.decode(context)
    observations = text.split("<|user|>")[2:]  # the env's "+c=" turns
    conversation = [{"role": "user", "content": "23+45="}]
    for turn in (1, 2, 3):
        conversation.append({"role": "assistant", "content": replies[turn]})
        if turn < 3:
            conversation.append({"role": "user", "content": observations[turn - 1].split("<eos>")[0]})
    rendered = chat.apply_chat_template(conversation, tokenize=False)
    assert text == rendered
    assert context == chat(rendered, add_special_tokens=False)["input_ids"]
    generated = [chat.decode([t]) for t, m in zip(trajectory.completion_ids, trajectory.loss_mask) if m]
    assert "".join(generated) == "68<eos>71<eos>9<eos>"  # the model's tokens, and only those, are trained on
