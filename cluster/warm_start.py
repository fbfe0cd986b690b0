"""Warm-start recipes of the demo models: the vocabulary each needs and the supervised data that
leaves the model partially competent, so that RL has something to sharpen.

Each recipe is a frozen config (selected by `recipe`) with `characters` and `words` (whole tokens)
for the character-level tokenizer and `phases(rng)`: the supervised phases to run, in order.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from envs.base import Task
from envs.tasks import ArithmeticTaskConfig, ArithmeticTasks
from learner.sft import SFTExample

ARITHMETIC = "0123456789+-= "
BUILD_FORMAT = 4  # bump when the build recipe changes in a way the settings do not capture


@dataclass(frozen=True)
class SFTPhase:
    name: str
    examples: list[SFTExample]
    steps: int
    lr: float


class _Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    characters: ClassVar[str] = ARITHMETIC
    words: ClassVar[tuple[str, ...]] = ()


def noisy_answer(correct: int, label_noise: float, max_offset: int, rng: np.random.Generator) -> int:
    """`correct`, or with probability label_noise correct +- 1..max_offset (never negative)."""
    if rng.random() >= label_noise:
        return correct
    offset = int(rng.integers(1, max_offset + 1))
    return correct - offset if rng.random() < 0.5 and correct >= offset else correct + offset


def noisy_sft_examples(tasks: Sequence[Task], label_noise: float, max_offset: int, copies: int,
                       rng: np.random.Generator) -> list[SFTExample]:
    """`copies` examples per task; each label is correct +- 1..max_offset with probability label_noise."""
    return [SFTExample(prompt=task.prompt, completion=str(noisy_answer(int(task.answer), label_noise, max_offset, rng)))
            for task in tasks for _ in range(copies)]


class AdditionWarmStart(_Recipe):
    """Two phases. Clean labels first: the model learns to add (noisy labels from the start slow
    that down several-fold). Then noisy labels: with probability label_noise the answer is replaced
    by correct +- 1..noise_max_offset, so the model learns a spread answer distribution whose mode is
    right. Greedy decoding is then mostly correct while temperature-1 samples are right far less
    often, and RL has room to sharpen it."""

    recipe: Literal["addition"] = "addition"
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

    def phases(self, rng: np.random.Generator) -> list[SFTPhase]:
        tasks = ArithmeticTasks(ArithmeticTaskConfig(max_operand=self.max_operand)).train_tasks()
        clean = [SFTExample(prompt=task.prompt, completion=task.answer) for task in tasks]
        noisy = noisy_sft_examples(tasks, self.label_noise, self.noise_max_offset, self.noisy_copies, rng)
        return [SFTPhase("clean", clean, self.clean_steps, self.clean_lr),
                SFTPhase("noisy", noisy, self.noisy_steps, self.noisy_lr)]


class CalculatorWarmStart(_Recipe):
    """Three-digit addition with the calculator tool (envs/calculator.py, instructions off). A share
    `tool_rate` of the examples is a tool episode, `<calc>a+b</calc>`, the env's `<result>s</result>`,
    then `s`; the others answer directly, which a model this small gets wrong often. So the warm
    model sometimes calls the tool and is right when it does: RL can learn to call it."""

    recipe: Literal["calculator"] = "calculator"
    characters: ClassVar[str] = ARITHMETIC + "*/()." + string.ascii_lowercase + ":"  # error texts are letters
    words: ClassVar[tuple[str, ...]] = ("<calc>", "</calc>", "<result>", "</result>")
    max_operand: int = Field(999, ge=1, le=999)
    tool_rate: float = Field(0.25, ge=0.0, le=1.0)
    """Share of the examples that call the tool."""
    label_noise: float = Field(0.5, ge=0.0, lt=1.0)
    """Of direct answers: probability of a nearby wrong label (as in the addition recipe), so that
    answering without the tool stays unreliable when sampling."""
    num_problems: int = Field(20_000, ge=1)
    """Training problems drawn for the SFT data (the task source has about a million)."""
    steps: int = Field(1500, ge=1)
    """600 steps left the copies (the call's expression, the result into the answer) wrong a third
    of the time; 1500 make them reliable (measured: 94% and 100% at T=1)."""
    lr: float = Field(3e-3, gt=0.0)

    def phases(self, rng: np.random.Generator) -> list[SFTPhase]:
        source = ArithmeticTasks(ArithmeticTaskConfig(max_operand=self.max_operand))
        examples = []
        for _ in range(self.num_problems):
            task = source.sample(rng)
            if rng.random() < self.tool_rate:
                expression = task.prompt.rstrip("=")
                examples.append(SFTExample(task.prompt, f"<calc>{expression}</calc>",
                                           ((f"<result>{task.answer}</result>", task.answer),)))
            else:
                answer = noisy_answer(int(task.answer), self.label_noise, 3, rng)
                examples.append(SFTExample(task.prompt, str(answer)))
        return [SFTPhase("mixed", examples, self.steps, self.lr)]


def _game(name: str):
    from envs.games.kuhn import KUHN_POKER
    from envs.games.tictactoe import TICTACTOE

    return {"tictactoe": TICTACTOE, "kuhn_poker": KUHN_POKER}[name]


def random_play_examples(game, games: int, rng: np.random.Generator) -> list[SFTExample]:
    """Games of uniformly random legal moves, as the rollout worker lays out a self-play episode: each
    seat's observations (the whole position, as `observe` renders it) and its moves, one example per
    seat that moved."""
    examples = []
    for _ in range(games):
        state = game.initial_state(int(rng.integers(2**31)))
        turns: dict[int, list[tuple[str, str]]] = {0: [], 1: []}
        while game.outcome(state) is None:
            seat, moves = game.to_move(state), game.legal_moves(state)
            move = moves[int(rng.integers(len(moves)))]
            turns[seat].append((game.observe(state, seat), move))
            state = game.apply(state, move)
        for seat_turns in turns.values():
            if seat_turns:
                (prompt, move), *later = seat_turns
                examples.append(SFTExample(prompt, move, tuple(later)))
    return examples


class GameWarmStart(_Recipe):
    """The game's text and moves from games of random legal play: the warm model answers each
    position with a move, legal more often than not, and plays no better than chance. RL against
    opponents and itself has everything left to learn."""

    recipe: Literal["tictactoe", "kuhn_poker"] = "tictactoe"
    games: int = Field(4000, ge=1)
    steps: int = Field(400, ge=1)
    lr: float = Field(3e-3, gt=0.0)

    @property
    def characters(self) -> str:  # type: ignore[override]  # the game's own alphabet
        return _game(self.recipe).alphabet

    def phases(self, rng: np.random.Generator) -> list[SFTPhase]:
        return [SFTPhase("random_play", random_play_examples(_game(self.recipe), self.games, rng), self.steps, self.lr)]


WarmStart = Annotated[Union[AdditionWarmStart, CalculatorWarmStart, GameWarmStart], Field(discriminator="recipe")]


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
    warm_start: WarmStart = AdditionWarmStart()
    """The supervised warm start (and the vocabulary it needs), by recipe: addition | calculator |
    tictactoe | kuhn_poker."""
    sft_batch_size: int = Field(128, ge=1)
    seed: int = 0

    def cache_key(self) -> str:
        payload = json.dumps({"format": BUILD_FORMAT, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
