"""Math word problems from local GSM8K-layout files, and the numeric answer checks they need.

A file (JSONL/JSON or Parquet, read with Hugging Face `datasets`) has a question column and an
answer column holding a solution that ends in "#### N" (GSM8K), a `\\boxed{N}`, or a bare number.
Answers are compared as numbers: `normalize_number` maps every spelling of a rational value to
one canonical string ("1,234" and "1234.00" -> "1234", "3/4" and "\\frac{3}{4}" -> "0.75"),
so two answers are equal iff their normalised strings are. `datasets` is imported only when a
file is read: `import envs` must stay light for the learner and the buffer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from envs.base import Task
from envs.errors import EnvError
from envs.rewards import register_reward
from envs.tasks import register_task_source

MAX_ANSWER_LENGTH = 100  # characters of an answer to normalise; int() refuses > 4300 digits
_MARKER = "####"
_BOXED = "\\boxed{"
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"  # commas only as thousands separators
_ANSWER = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:\\?\$\s*)?"  # sign, then an optional (LaTeX-escaped) dollar sign
    rf"(?:(?P<decimal>{_DECIMAL})"
    rf"|(?P<num>\d+)\s*/\s*(?P<den>\d+)"
    rf"|\\[dt]?frac\{{\s*(?P<fnum>\d+)\s*\}}\{{\s*(?P<fden>\d+)\s*\}})"
    rf"\s*(?:\\?%)?\.?"  # a percent sign is a unit ("50%" -> 50); a final "." ends a sentence
)
# A number in prose, with "-" or the minus sign "−". A comma or point between digits never ends
# one: "1,2" is no number (a list, or a decimal comma), so neither 1 nor 2; "1.2.3" neither; and
# "1e3" is not 1.
_NUMBER_IN_TEXT = re.compile(
    rf"(?<![\w.])(?<!\d,)[-\u2212]?(?:{_DECIMAL})(?:/\d+)?"
    r"(?![.,]?\d|[eE][-+]?\d)"
)


def extract_answer(text: str, last_number_fallback: bool = False) -> str | None:
    """The final answer as written: the first line after the last "####", else the content of
    the last `\\boxed{...}` (nested braces allowed). None when there is none.

    With `last_number_fallback` a marked answer that is no number as a whole ("#### 42 dollars",
    "\\boxed{x = 42}") gives its last number, and a text without a marker the last number in it.
    The fallback is for model completions (the `math_answer` reward), never for dataset answers:
    a solution without a marker must be a bare number, not a number picked out of its prose."""
    answer = _marked_answer(text)
    if not last_number_fallback:
        return answer
    if answer is None:
        return last_number(text)
    return answer if parse_number(answer) is not None else last_number(answer)


def _marked_answer(text: str) -> str | None:
    for extract in (_after_last_marker, _last_boxed):
        if (answer := extract(text)) is not None:
            return answer
    return None


def _after_last_marker(text: str) -> str | None:
    start = text.rfind(_MARKER)
    if start < 0:
        return None
    lines = text[start + len(_MARKER):].strip().splitlines()
    return lines[0].strip() if lines else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth = 1
    for end in range(start + len(_BOXED), len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start + len(_BOXED):end].strip() or None
    return None  # unbalanced: not an answer


def last_number(text: str) -> str | None:
    """The last number in prose as written ("1,234.5", "−3", "3/4"), or None."""
    numbers = _NUMBER_IN_TEXT.findall(text)
    return numbers[-1] if numbers else None


def parse_number(text: str) -> Fraction | None:
    """The value of a number written as an answer, or None: an optional sign ("-", "−" or "+",
    spaces after it allowed), "$" or "\\$", then a decimal (commas as thousands separators), a
    fraction "a/b" or `\\frac{a}{b}` (also \\dfrac, \\tfrac) of unsigned integers, then "%" or
    "\\%" (dropped as a unit: "50%" is 50) and a full stop. Scientific notation, units and
    expressions are None."""
    if len(text) > MAX_ANSWER_LENGTH:
        return None
    match = _ANSWER.fullmatch(text.strip().replace("\u2212", "-"))  # the minus sign "−" is a "-"
    if match is None:
        return None
    if match["decimal"] is not None:
        value = Fraction(match["decimal"].replace(",", ""))
    else:
        numerator, denominator = int(match["num"] or match["fnum"]), int(match["den"] or match["fden"])
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator)
    return -value if match["sign"] == "-" else value


def canonical(value: Fraction) -> str:
    """Integers as digits, values with a finite decimal expansion as the shortest decimal,
    others as the reduced fraction "p/q": one string per rational value."""
    if value.denominator == 1:
        return str(value.numerator)
    twos = _multiplicity(value.denominator, 2)
    fives = _multiplicity(value.denominator, 5)
    if value.denominator != 2**twos * 5**fives:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)  # the fewest decimals that are exact, so no trailing zero
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _multiplicity(n: int, prime: int) -> int:
    count = 0
    while n % prime == 0:
        n //= prime
        count += 1
    return count


def normalize_number(text: str) -> str | None:
    """The canonical string of a written number ("1,234.00" -> "1234", "- 5" -> "-5",
    "3/4" -> "0.75", "1/3" -> "1/3"), or None when `parse_number` rejects it."""
    value = parse_number(text)
    return None if value is None else canonical(value)


@register_reward("math_answer")
def math_answer(task: Task, completion: str, info: Mapping[str, Any]) -> float:
    """1 when the completion's answer ("####", else the last \\boxed{}, else the last number)
    equals the task's answer as a number."""
    expected = normalize_number(task.answer)
    if expected is None:
        raise EnvError(f"math_answer: task {task.task_id!r} has a non-numeric answer {task.answer!r}")
    answer = extract_answer(completion, last_number_fallback=True)
    return float(answer is not None and normalize_number(answer) == expected)


class MathDataError(EnvError):
    """A math dataset file that cannot be used; the message names the file, column or value."""


class MathDatasetConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | tuple[Path, ...]
    """A JSONL/JSON or Parquet file, or a list of them (their rows in that order)."""
    format: Literal["auto", "json", "parquet"] = "auto"
    """auto: from each file's extension (.json, .jsonl: json; .parquet: parquet)."""
    question_column: str = "question"
    answer_column: str = "answer"
    """A solution ending in "#### N" (GSM8K), one with a \\boxed{N}, or a bare number."""
    split: str = "train"
    """The split `datasets` gives the files (a local file is the one split "train"). A plain
    name only: a slice such as "train[:100]" would renumber the rows, and so the task ids."""
    eval_size: int = Field(200, ge=1)
    """Held-out rows: the first eval_size after a shuffle seeded by eval_seed."""
    eval_seed: int = 1234
    """Fixes the held-out rows; independent of the training seed so runs share one eval set."""
    category_column: str | None = None
    """Categories (the curriculum's arms) "<column>=<value>"; None: one category "all"."""
    prompt_template: str = "Question: {question}\nAnswer:"
    """The prompt; "{question}" is replaced by the question (other braces are left alone).
    It ends where the model's answer begins, for base and chat models alike."""

    @field_validator("path")
    @classmethod
    def _some_path(cls, path: Path | tuple[Path, ...]) -> Path | tuple[Path, ...]:
        if not path:
            raise ValueError("path names no file")
        return path

    @field_validator("split")
    @classmethod
    def _plain_split(cls, split: str) -> str:
        if not re.fullmatch(r"\w+", split):
            raise ValueError(f"split must be a plain split name, got {split!r}")
        return split

    @field_validator("prompt_template")
    @classmethod
    def _has_question(cls, template: str) -> str:
        if "{question}" not in template:
            raise ValueError(f"prompt_template has no {{question}}: {template!r}")
        return template

    def files(self) -> list[Path]:
        return [self.path] if isinstance(self.path, Path) else list(self.path)


_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def file_format(file: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if file.suffix not in _FORMATS:
        raise MathDataError(f"cannot tell the format of {file} from its extension; set format to json or parquet")
    return _FORMATS[file.suffix]


def read_columns(file: Path, cfg: MathDatasetConfig) -> dict[str, list[Any]]:
    """The configured columns of one file, read with `datasets`."""
    import datasets  # heavy (pyarrow, pandas): only when a file is read
    import pyarrow

    if not file.is_file():
        raise MathDataError(f"math dataset file not found: {file}")
    if file.stat().st_size == 0:  # datasets raises a bare StopIteration on an empty file
        raise MathDataError(f"math dataset file {file} is empty")
    builder = file_format(file, cfg.format)
    try:
        table = datasets.load_dataset(builder, data_files=str(file), split=cfg.split)
    except (datasets.exceptions.DatasetsError, pyarrow.ArrowException, OSError, ValueError) as e:
        raise MathDataError(f"cannot read math dataset file {file}: {type(e).__name__}: {e}") from e
    if len(table) == 0:
        raise MathDataError(f"math dataset file {file} has no rows")
    wanted = [cfg.question_column, cfg.answer_column] + ([cfg.category_column] if cfg.category_column else [])
    for column in wanted:
        if column not in table.column_names:
            raise MathDataError(f"math dataset file {file} has no column {column!r}; columns: {table.column_names}")
    return {column: list(table[column]) for column in wanted}


def file_tasks(file: Path, cfg: MathDatasetConfig) -> list[Task]:
    columns = read_columns(file, cfg)
    questions, solutions = columns[cfg.question_column], columns[cfg.answer_column]
    refuse_float_answers(file, cfg.answer_column, solutions)
    column = cfg.category_column
    categories = [f"{column}={value}" for value in columns[column]] if column else ["all"] * len(questions)
    tasks, bad_rows = [], []
    for row, (question, solution, category) in enumerate(zip(questions, solutions, categories, strict=True)):
        answer = normalize_number(extract_answer(str(solution)) or str(solution))
        if not isinstance(question, str) or not question.strip() or answer is None:
            bad_rows.append(row)
            continue
        tasks.append(Task(
            task_id=f"math/{file.stem}/{row}",
            category=category,
            prompt=cfg.prompt_template.replace("{question}", question),
            answer=answer,
            metadata={"question": question},
        ))
    if bad_rows:
        raise MathDataError(f"{len(bad_rows)} rows of {file} have no question in {cfg.question_column!r} or no "
                            f"numeric answer in {cfg.answer_column!r} (first rows: {bad_rows[:5]})")
    return tasks


def refuse_float_answers(file: Path, column: str, answers: list[Any]) -> None:
    """A float answer has lost its digits: str(0.1 * 3) is "0.30000000000000004", which no model
    answer matches, and JSON reads an integer beyond int64 as a float (10**20 + 1 -> 1e+20)."""
    rows = [row for row, answer in enumerate(answers) if isinstance(answer, float)]
    if rows:
        raise MathDataError(f"math dataset file {file} column {column!r} holds floating-point answers (rows "
                            f"{rows[:5]}, e.g. {answers[rows[0]]!r}): floats lose digits (JSON reads integers beyond "
                            f"int64 as floats too); write the answers as strings or integers")


@register_task_source("math_dataset")
class MathDatasetTasks:
    """Tasks from local math files: a held-out eval slice and the training rest.

    The eval slice is the first `eval_size` rows after a shuffle seeded by `eval_seed`. Training
    data is every other row whose question is not also an eval question (duplicated questions
    would leak the held-out set), in file order."""

    def __init__(self, config: MathDatasetConfig | None = None, **kwargs: Any) -> None:
        self.config = config or MathDatasetConfig(**kwargs)
        files = self.config.files()
        stems = [file.stem for file in files]
        if len(set(stems)) != len(stems):
            raise MathDataError(f"math dataset files need distinct names (the task ids use them), got {files}")
        tasks = [task for file in files for task in file_tasks(file, self.config)]
        held_out = np.random.default_rng(self.config.eval_seed).permutation(len(tasks))[:self.config.eval_size]
        self._eval = [tasks[i] for i in held_out]
        eval_ids = {task.task_id for task in self._eval}
        eval_questions = {task.metadata["question"] for task in self._eval}
        self._train = [task for task in tasks
                       if task.task_id not in eval_ids and task.metadata["question"] not in eval_questions]
        if not self._train:
            raise MathDataError(f"eval_size={self.config.eval_size} leaves no training rows of the "
                                f"{len(tasks)} in {', '.join(map(str, files))}")
        self._train_by_category: dict[str, list[Task]] = {}
        for task in self._train:
            self._train_by_category.setdefault(task.category, []).append(task)
        self.categories = sorted(self._train_by_category)

    def sample(self, rng: np.random.Generator, category: str | None = None) -> Task:
        if category is None:
            pool = self._train
        elif category in self._train_by_category:
            pool = self._train_by_category[category]
        else:
            raise EnvError(f"unknown category {category!r}; valid: {', '.join(self.categories)}")
        return pool[rng.integers(len(pool))]

    def train_tasks(self) -> list[Task]:
        """Every training task once, in file order (the SFT warm start's data)."""
        return list(self._train)

    def eval_tasks(self) -> list[Task]:
        return list(self._eval)
