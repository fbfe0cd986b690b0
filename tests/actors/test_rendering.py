"""Observations to tokens: plain text, and chat templates rendered as a continuation of the
conversation (never re-rendering the past)."""

from __future__ import annotations

import pytest

from actors.episode import EpisodeLimits
from actors.episode_loop import EpisodeLoop
from actors.rendering import ChatRenderer, PlainRenderer, RenderError, make_renderer
from envs import Action, Env, EpisodeErrorCounter, Observation, SafeEnv, StepResult, Task, make_env, register_env
from tests.actors.conftest import ScriptedEngine
from tests.actors.episode_runs import run_groups
from tests.tiny_models import CHAT_TEMPLATE, chat_tokenizer

TASK = Task(task_id="add/23+45", category="carries=0", prompt="23+45=", answer="68")
# Qwen3's template in short: the last assistant message gets an empty think block, earlier ones none.
QWEN3_LIKE = ("{% for m in messages %}<|{{ m['role'] }}|>"
              "{% if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
              "{{ m['content'] }}<eos>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
# Gemma's and Mistral's templates raise on the roles they do not support.
USER_AND_ASSISTANT_ONLY = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
                           "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
                           "<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                           "{% if add_generation_prompt %}<|assistant|>{% endif %}")


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


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, QWEN3_LIKE], ids=["plain", "qwen3"])
def test_a_multi_turn_chat_episode_is_the_conversation_the_template_would_render(template):
    """Token for token, the context equals the template's rendering of the whole conversation,
    although each observation was rendered once, on its own."""
    chat = chat_tokenizer()
    chat.chat_template = template
    replies = {1: "68", 2: "71", 3: "9"}

    def reply(prompt, index):
        turn = chat.decode(prompt).count("<|assistant|>")
        return chat(replies[turn], add_special_tokens=False)["input_ids"]

    errors = EpisodeErrorCounter()
    loop = EpisodeLoop(ScriptedEngine(reply), ChatRenderer(chat), EpisodeLimits(max_turns=3), errors)
    [group] = run_groups(loop, [(TASK, [SafeEnv(make_env("chain_arithmetic", turns=3), errors)])])
    [trajectory] = group.episodes[0].trajectories()
    context = list(trajectory.prompt_ids) + list(trajectory.completion_ids)
    text = chat.decode(context)
    observations = text.split("<|user|>")[2:]  # the env's "+c=" turns
    conversation = [{"role": "user", "content": "23+45="}]
    for turn in (1, 2, 3):
        conversation.append({"role": "assistant", "content": replies[turn]})
        if turn < 3:
            conversation.append({"role": "user", "content": observations[turn - 1].split("<eos>")[0]})
    # The model writes its turn's think block itself: the template adds one to the last turn only.
    rendered = chat.apply_chat_template(conversation, tokenize=False).replace("<think>\n\n</think>\n\n", "")
    assert text == rendered
    assert context == chat(rendered, add_special_tokens=False)["input_ids"]
    generated = [chat.decode([t]) for t, m in zip(trajectory.completion_ids, trajectory.loss_mask) if m]
    assert "".join(generated) == "68<eos>71<eos>9<eos>"  # the model's tokens, and only those, are trained on


@register_env("test_sends_a_system_message")
class SendsASystemMessage(Env):
    """Opens on the task's prompt and answers a turn with a system message, to the player that
    acted (as a tool would) or to a second player; or opens on a system message."""

    def __init__(self, when: str) -> None:
        self.when = when

    def reset(self, task: Task) -> Observation:
        system = [{"role": "system", "content": "0"}, {"role": "user", "content": task.prompt}]
        return Observation(task.prompt, messages=system if self.when == "reset" else None)

    def step(self, action: Action | str) -> StepResult:
        system = Observation("", messages=[{"role": "system", "content": "0"}],
                             role="o" if self.when == "to the second player" else "")
        return StepResult(system, 0.0, False)


def test_a_message_the_template_refuses_fails_only_its_episode():
    chat = chat_tokenizer()
    chat.chat_template = USER_AND_ASSISTANT_ONLY
    errors = EpisodeErrorCounter()
    engine = ScriptedEngine(lambda prompt, i: chat("68", add_special_tokens=False)["input_ids"])
    loop = EpisodeLoop(engine, ChatRenderer(chat), EpisodeLimits(max_turns=2), errors)
    envs = [SendsASystemMessage(when) for when in ("reset", "after a turn", "to the second player")]
    envs.append(make_env("arithmetic"))
    [group] = run_groups(loop, [(TASK, [SafeEnv(env, errors) for env in envs])])
    refused = "RenderError: TemplateError: Only user and assistant roles are supported!"
    assert [(e.finish_reason, e.error) for e in group.episodes] == [("error", refused)] * 3 + [("stop", None)]
