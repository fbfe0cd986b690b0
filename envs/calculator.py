"""A calculator tool env: the model may call `<calc>EXPR</calc>` before it answers.

It is the smallest agentic env: a tool call is a model turn, its result is an observation
(loss_mask 0 in the trajectory), and the final answer is graded. The expression is model output,
so it is parsed by a hand-written recursive-descent parser (never `eval`, `ast` or `compile`)
whose limits on length, nesting, literal size and magnitude reject hostile input in bounded
time and memory. Values are exact `Fraction`s, so "0.1+0.2" is 0.3 and "1/3*3" is 1.

The reward adds SPEAR's auxiliary tool-call bonus r_tool = c(t) * min(calls, k) / k to the
correctness of the final answer; c(t) decays from c0 to 0 over T learner steps, so calling the
tool pays early in training and only being right pays later (ALGORITHMS.md, SPEAR).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from envs.base import Action, Env, Observation, StepResult, Task, as_action, register_env
from envs.errors import EnvError, EpisodeStateError
from envs.math_data import last_number, parse_number
from envs.single_turn import turn_info

MAX_LENGTH = 200  # characters; checked first, so a 1 MB input costs one len()
MAX_DEPTH = 16  # parenthesis nesting; bounds the parser's recursion far below Python's limit
MAX_DIGITS = 30  # digits of one literal (integer and fraction part together)
MAX_MAGNITUDE = 10**30  # |value| of every intermediate and final result, so the integers stay small
_WHITESPACE = frozenset(" \t\r\n")  # ASCII only: other Unicode spaces are unexpected characters
_DIGITS = frozenset("0123456789")  # ASCII only: str.isdigit would accept '３', '١' and '²'


class CalculatorError(EnvError):
    """An expression the calculator rejects; the message names the problem and where."""


class _Parser:
    """expr := term (('+' | '-') term)*;  term := unary (('*' | '/') unary)*;
    unary := '-'* primary;  primary := NUMBER | '(' expr ')';  NUMBER := DIGITS ('.' DIGITS)?"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end), without consuming it."""
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def unexpected(self) -> CalculatorError:
        char = self.peek()
        if not char:
            return CalculatorError("unexpected end")
        return CalculatorError(f"unexpected character {char!r} at {self.pos}")

    def parse(self) -> Fraction:
        if not self.peek():
            raise CalculatorError("empty expression")
        value = self.expr()
        if self.peek():
            raise self.unexpected()
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while (op := self.peek()) in ("+", "-"):
            self.pos += 1
            right = self.term()
            value = _bounded(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while (op := self.peek()) in ("*", "/"):
            self.pos += 1
            right = self.unary()
            if op == "/" and right == 0:
                raise CalculatorError("division by zero")
            value = _bounded(value * right if op == "*" else value / right)
        return value

    def unary(self) -> Fraction:
        negate = False
        while self.peek() == "-":  # a loop, not recursion: "-" * 199 + "1" stays flat
            self.pos += 1
            negate = not negate
        value = self.primary()
        return -value if negate else value

    def primary(self) -> Fraction:
        char = self.peek()
        if char in _DIGITS:
            return self.number()
        if char != "(":
            raise self.unexpected()
        if self.depth == MAX_DEPTH:
            raise CalculatorError(f"nesting deeper than {MAX_DEPTH}")
        self.pos += 1
        self.depth += 1
        value = self.expr()
        if self.peek() != ")":
            raise self.unexpected()
        self.pos += 1
        self.depth -= 1
        return value

    def number(self) -> Fraction:
        start = self.pos
        self.digits()
        if self.text.startswith(".", self.pos) and self.text[self.pos + 1:self.pos + 2] in _DIGITS:
            self.pos += 1  # a "." without digits after it is left for the caller to reject
            self.digits()
        literal = self.text[start:self.pos]
        num_digits = len(literal) - literal.count(".")
        if num_digits > MAX_DIGITS:
            raise CalculatorError(f"number too large ({num_digits} digits > {MAX_DIGITS})")
        return Fraction(literal)

    def digits(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _DIGITS:
            self.pos += 1


def _bounded(value: Fraction) -> Fraction:
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"number too large (beyond {float(MAX_MAGNITUDE):g})")
    return value


def evaluate_expression(text: str) -> Fraction:
    """The exact value of an arithmetic expression: integer and decimal literals, binary
    + - * /, unary minus and parentheses, with ASCII whitespace between tokens."""
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"expression too long ({len(text)} > {MAX_LENGTH} characters)")
    return _Parser(text).parse()


def format_result(value: Fraction) -> str:
    """Integers as plain digits; other values rounded half away from zero to 6 decimals,
    without trailing zeros ("0.333333", "2.5"); a value that rounds to zero is "0"."""
    if value.denominator == 1:
        return str(value.numerator)
    millionths = math.floor(abs(value) * 10**6 + Fraction(1, 2))
    whole, fraction = divmod(millionths, 10**6)
    digits = f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")
    return f"-{digits}" if value < 0 and millionths else digits


class ToolBonusConfig(BaseModel):
    """SPEAR's tool-call bonus r_tool = c(t) * min(calls, k) / k, c(t) decaying from c0 to 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    c0: float = Field(0.2, ge=0)
    """The bonus coefficient at learner step 0; 0 turns the bonus off."""
    k: int = Field(1, ge=1)
    """Calls that earn the full bonus; more calls earn no more."""
    steps: int = Field(200, ge=1)
    """T: the learner step at which c(t) reaches 0 (and stays)."""
    schedule: Literal["linear", "cosine"] = "linear"
    """linear: c0 * (1 - t/T); cosine: c0 * (1 + cos(pi * t/T)) / 2."""


def tool_bonus_coefficient(step: int, cfg: ToolBonusConfig) -> float:
    """c(t) at learner step t, clamped to [0, T] (a negative version counts as step 0)."""
    progress = min(max(step, 0), cfg.steps) / cfg.steps
    if cfg.schedule == "linear":
        return cfg.c0 * (1.0 - progress)
    return cfg.c0 * 0.5 * (1.0 + math.cos(math.pi * progress))


_CALL_OPEN, _CALL_CLOSE = "<calc>", "</calc>"
_CALL_SPAN = re.compile(r"<calc>.*?(?:</calc>|$)", re.DOTALL)  # an unclosed call runs to the end
CALL_SYNTAX = (
    "You may use a calculator: write <calc>EXPRESSION</calc> (numbers, + - * /, parentheses) "
    "and the result comes back as <result>VALUE</result>. Reply with the final answer as a number.\n"
)


def final_answer(text: str) -> Fraction | None:
    """The last number of a final turn outside its `<calc>` spans, or None: a call made after the
    calls ran out is an expression, not an answer. "936/2" is 468, "1,936" is 1936."""
    number = last_number(_CALL_SPAN.sub(" ", text))
    return None if number is None else parse_number(number)


def answer_is_correct(task: Task, completion: str) -> bool:
    """The completion's final answer equals the task's answer as a number ("936" = "936.0")."""
    try:
        expected = Fraction(task.answer.strip())
    except ValueError as e:
        raise EnvError(f"calculator task {task.task_id!r} has a non-numeric answer {task.answer!r}") from e
    return final_answer(completion) == expected


def call_result(text: str) -> tuple[str, bool]:
    """The observation text for a turn's first `<calc>` span, and whether it gave a value."""
    start = text.index(_CALL_OPEN) + len(_CALL_OPEN)
    end = text.find(_CALL_CLOSE, start)
    if end < 0:
        return f"<result>error: missing {_CALL_CLOSE}</result>", False
    try:
        return f"<result>{format_result(evaluate_expression(text[start:end]))}</result>", True
    except CalculatorError as e:
        return f"<result>error: {e}</result>", False


@register_env("calculator")
class CalculatorEnv(Env):
    """Tool calls, then a final answer; for tasks whose `answer` is a number.

    Call syntax: a turn containing `<calc>` is a call; the first `<calc>EXPR</calc>` span is
    evaluated and answered with the observation `<result>VALUE</result>`, or
    `<result>error: MESSAGE</result>` for an expression the parser rejects or a missing
    `</calc>`. Do not make "</calc>" a sampling stop string: vLLM drops stop strings from the
    text, so every call would lack its closing tag. A turn without `<calc>` is the final answer:
    its last number is graded and the episode ends.

    Each call turn uses one of `max_calls`. A call after they are used up is answered
    `<result>error: no calls left</result>`, and the turn after that is graded as the final
    answer whatever it contains (its last number outside `<calc>` spans), so an episode has at
    most max_calls + 2 turns.
    Only calls answered with a value count as `tool_calls` (for the bonus and the metrics):
    an empty or broken `<calc>` must not earn the bonus.

    Rewards: call steps 0 with no parts; the final step correctness + tool_bonus, with both
    parts, where t of the bonus is the final turn's `policy_version`. `instructions` (default
    CALL_SYNTAX; "" for none) are prepended to the task prompt to teach the call syntax.
    """

    def __init__(self, max_calls: int = 2, tool_bonus: ToolBonusConfig | dict[str, Any] | None = None,
                 instructions: str = CALL_SYNTAX) -> None:
        if max_calls < 1:
            raise EnvError(f"calculator needs max_calls >= 1, got {max_calls}")
        self.max_calls = max_calls
        self.tool_bonus = ToolBonusConfig() if tool_bonus is None else ToolBonusConfig.model_validate(tool_bonus)
        self.instructions = instructions
        self._task: Task | None = None
        self._call_turns = 0  # turns with <calc>: malformed ones and the one told "no calls left" too
        self._tool_calls = 0  # calls answered with a value

    def reset(self, task: Task) -> Observation:
        self._task = task
        self._call_turns = 0
        self._tool_calls = 0
        return Observation(text=self.instructions + task.prompt)

    def step(self, action: Action | str) -> StepResult:
        if self._task is None:
            raise EpisodeStateError("calculator.step called before reset or after the episode ended")
        action = as_action(action)
        info = turn_info(action)
        if _CALL_OPEN not in action.text or self._call_turns > self.max_calls:
            task, self._task = self._task, None
            return self._grade(task, action, info)
        self._call_turns += 1
        if self._call_turns > self.max_calls:
            text = "<result>error: no calls left</result>"
        else:
            text, answered = call_result(action.text)
            self._tool_calls += int(answered)
        return StepResult(Observation(text=text), reward=0.0, done=False, info=info)

    def _grade(self, task: Task, action: Action, info: dict[str, Any]) -> StepResult:
        correctness = float(answer_is_correct(task, action.text))
        cfg = self.tool_bonus
        bonus = tool_bonus_coefficient(action.policy_version, cfg) * min(self._tool_calls, cfg.k) / cfg.k
        return StepResult(
            observation=None, reward=correctness + bonus, done=True, info=info,
            reward_parts={"correctness": correctness, "tool_bonus": bonus},
            metrics={"accuracy": correctness, "tool_call_rate": float(self._tool_calls > 0),
                     "tool_calls": float(self._tool_calls)},
        )
