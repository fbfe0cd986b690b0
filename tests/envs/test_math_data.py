"""Math datasets: answer extraction and normalisation against hand-written cases, loading
JSONL and Parquet, the held-out slice, categories, and configuration errors that name the
file, column or value."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from envs import EnvError, Task, make_reward, make_task_source
from envs.math_data import (
    MathDataError,
    MathDatasetConfig,
    MathDatasetTasks,
    extract_answer,
    normalize_number,
)

SAMPLE = Path(__file__).parents[1] / "data" / "math_sample.jsonl"


@pytest.mark.parametrize(("text", "expected"), [
    ("1234", "1234"),
    ("1,234", "1234"),
    ("1,234,567.50", "1234567.5"),
    ("12.0", "12"),
    ("12.00", "12"),
    ("0.10", "0.1"),
    (".5", "0.5"),
    ("007", "7"),
    ("-5", "-5"),
    ("- 5", "-5"),
    ("+5", "5"),
    ("-0", "0"),
    (" 42 ", "42"),
    ("$18", "18"),
    ("-$18.00", "-18"),
    ("\\$5", "5"),
    ("50%", "50"),  # a unit, not 0.5
    ("50\\%", "50"),
    ("18.", "18"),  # the end of a sentence
    ("3/4", "0.75"),
    ("-3/4", "-0.75"),
    ("6/8", "0.75"),
    ("1/3", "1/3"),  # no finite decimal: the reduced fraction
    ("2/6", "1/3"),
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{3}{4}", "0.75"),
    ("-\\frac{1}{3}", "-1/3"),
    ("\u22123", "-3"),  # the minus sign
    ("1/1024", "0.0009765625"),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("text", [
    "", "abc", "18 dollars", "1e3", "1,23", "1234,5", "3/0", "3/-4", "\\frac{-1}{2}", "\\frac12",
    "\\sqrt{2}", "2+3", "--5", "1" * 101,
])
def test_normalize_number_rejects(text):
    assert normalize_number(text) is None


def test_equal_values_have_equal_strings():
    spellings = ["0.75", "3/4", "6/8", "\\frac{3}{4}", ".750", "$0.75"]
    assert {normalize_number(s) for s in spellings} == {"0.75"}
    assert normalize_number("0.7500001") != "0.75"


@pytest.mark.parametrize(("text", "expected"), [
    ("She has 48/2 = 24 clips.\n#### 72", "72"),
    ("#### 1,234", "1,234"),
    ("#### 5\n#### 7\nanything after", "7"),  # the last marker, its first line
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last box, nested braces
    ("\\boxed{5} and #### 6", "6"),  # the marker before the box
    ("no answer here", None),
    ("the answer is 18.", None),  # no last-number fallback by default
    ("####", None),
    ("\\boxed{}", None),
    ("\\boxed{3", None),  # unbalanced
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is 18.", "18"),
    ("It costs $1,234.50 in total.", "1,234.50"),
    ("10-5 = 5", "5"),
    ("so x = -5", "-5"),
    ("three quarters is 3/4", "3/4"),
    ("\\boxed{2", "2"),  # an unbalanced box is no answer; its number is the last number
    ("no digits", None),
    ("The answer is \u22123", "\u22123"),
    ("The answer is .5", ".5"),
    ("not 1.5 but 2", "2"),
    ("1,000 or 1,2", "1,000"),  # "1,2" is a list or a decimal comma: neither 1 nor 2
    ("1 or 2e3", "1"),
    ("#### 42 dollars", "42"),  # a marked answer that is no number gives its last number
    ("#### The answer is 42", "42"),
    ("\\boxed{42 \\text{ apples}}", "42"),
    ("\\boxed{x = 42}", "42"),
    ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # a number as a whole is kept whole
])
def test_extract_answer_with_the_last_number_fallback(text, expected):
    assert extract_answer(text, last_number_fallback=True) == expected


def test_math_answer_reward():
    reward = make_reward("math_answer")
    task = Task(task_id="math/x/0", category="all", prompt="?", answer="1500")
    for completion, expected in [("125 * 12 = 1,500\n#### 1,500", 1.0), ("\\boxed{1500.00}", 1.0),
                                 ("It pays $1,500.", 1.0), ("#### 1,501", 0.0), ("I don't know", 0.0),
                                 ("#### fifteen hundred 1500", 1.0), ("#### 1500 or 1501", 0.0)]:
        assert reward(task, completion, {}) == expected, completion
    with pytest.raises(EnvError, match="'math/x/0' has a non-numeric answer 'many'"):
        reward(Task(task_id="math/x/0", category="all", prompt="?", answer="many"), "1", {})


def test_loads_the_jsonl_sample():
    source = make_task_source("math_dataset", path=str(SAMPLE), eval_size=5, category_column="level")
    assert source.categories == ["level=1", "level=2", "level=3"]
    tasks = {task.task_id: task for task in source.eval_tasks() + source.train_tasks()}
    assert len(tasks) == 20
    first = tasks["math/math_sample/0"]
    assert first.prompt == "Question: Tom has 3 apples and buys 5 more. How many apples does he have now?\nAnswer:"
    assert (first.answer, first.category) == ("8", "level=1")
    assert first.metadata == {"question": "Tom has 3 apples and buys 5 more. How many apples does he have now?"}
    assert tasks["math/math_sample/15"].answer == "1500"  # "#### 1,500"
    assert tasks["math/math_sample/18"].answer == "-5"
    assert tasks["math/math_sample/19"].answer == "0.5"


def eval_ids_of(source: MathDatasetTasks) -> list[str]:
    return [task.task_id for task in source.eval_tasks()]


def test_eval_slice_is_disjoint_and_deterministic():
    source = MathDatasetTasks(path=str(SAMPLE), eval_size=6, eval_seed=7)
    eval_ids = eval_ids_of(source)
    train_ids = [task.task_id for task in source.train_tasks()]
    assert len(eval_ids) == 6 and len(train_ids) == 14
    assert not set(eval_ids) & set(train_ids)
    assert eval_ids == eval_ids_of(source)  # same order every call
    assert eval_ids == eval_ids_of(MathDatasetTasks(path=str(SAMPLE), eval_size=6, eval_seed=7))  # and every run
    assert eval_ids != eval_ids_of(MathDatasetTasks(path=str(SAMPLE), eval_size=6, eval_seed=8))
    assert train_ids == sorted(train_ids, key=lambda i: int(i.rsplit("/", 1)[1]))  # file order
    rng = np.random.default_rng(0)
    assert {source.sample(rng).task_id for _ in range(200)} == set(train_ids)
    assert source.categories == ["all"]


def test_sample_by_category():
    source = MathDatasetTasks(path=str(SAMPLE), eval_size=3, category_column="level")
    rng = np.random.default_rng(0)
    assert {source.sample(rng, "level=2").category for _ in range(20)} == {"level=2"}
    with pytest.raises(EnvError, match="unknown category 'level=9'"):
        source.sample(rng, "level=9")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_duplicated_eval_question_is_not_trained_on(tmp_path):
    rows = [{"question": "What is 2+2?", "answer": "4"}] * 2 + [{"question": f"What is {n}+1?", "answer": str(n + 1)}
                                                                   for n in range(4)]
    source = MathDatasetTasks(path=str(write_jsonl(tmp_path / "dup.jsonl", rows)), eval_size=3, eval_seed=0)
    eval_questions = {task.metadata["question"] for task in source.eval_tasks()}
    assert not eval_questions & {task.metadata["question"] for task in source.train_tasks()}


def test_loads_parquet_and_several_files(tmp_path):
    import datasets

    parquet = tmp_path / "copy.parquet"
    datasets.load_dataset("json", data_files=str(SAMPLE), split="train").to_parquet(str(parquet))
    from_parquet = MathDatasetTasks(path=str(parquet), eval_size=5)
    from_json = MathDatasetTasks(path=str(SAMPLE), eval_size=5)
    same = [(t.prompt, t.answer) for t in from_json.eval_tasks()]
    assert [(t.prompt, t.answer) for t in from_parquet.eval_tasks()] == same
    assert from_parquet.eval_tasks()[0].task_id.startswith("math/copy/")
    both = MathDatasetTasks(path=[str(SAMPLE), str(parquet)], eval_size=5)
    eval_questions = {t.metadata["question"] for t in both.eval_tasks()}
    assert len(both.train_tasks()) == 40 - 2 * len(eval_questions)  # each question is in both files
    assert {t.task_id.split("/")[1] for t in both.eval_tasks() + both.train_tasks()} == {"math_sample", "copy"}
    renamed = tmp_path / "data.bin"
    renamed.write_bytes(parquet.read_bytes())
    assert len(MathDatasetTasks(path=str(renamed), format="parquet", eval_size=5).train_tasks()) == 15


def test_plain_number_answers_and_custom_columns(tmp_path):
    rows = [{"problem": f"Compute {n} times 3.", "solution": n * 3} for n in range(5)]
    source = MathDatasetTasks(path=str(write_jsonl(tmp_path / "plain.jsonl", rows)), question_column="problem",
                              answer_column="solution", eval_size=1, prompt_template="Q: {question} {braces}\nA:")
    task = next(t for t in source.eval_tasks() + source.train_tasks() if t.task_id == "math/plain/4")
    assert (task.prompt, task.answer) == ("Q: Compute 4 times 3. {braces}\nA:", "12")


def test_configuration_errors_name_the_file_column_or_value(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(MathDataError, match=f"not found: {re.escape(str(missing))}"):
        MathDatasetTasks(path=str(missing))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(MathDataError, match=f"{re.escape(str(empty))} is empty"):
        MathDatasetTasks(path=str(empty))
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"question": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(MathDataError, match=f"cannot read math dataset file {re.escape(str(garbage))}"):
        MathDatasetTasks(path=str(garbage))
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(MathDataError, match=f"cannot read math dataset file {re.escape(str(fake))}"):
        MathDatasetTasks(path=str(fake))
    unknown = tmp_path / "data.csv"
    unknown.write_text("question,answer\n")
    with pytest.raises(MathDataError, match=f"format of {re.escape(str(unknown))}"):
        MathDatasetTasks(path=str(unknown))
    with pytest.raises(MathDataError, match=f"{re.escape(str(SAMPLE))} has no column 'problem'"):
        MathDatasetTasks(path=str(SAMPLE), question_column="problem")
    with pytest.raises(MathDataError, match="has no column 'difficulty'"):
        MathDatasetTasks(path=str(SAMPLE), category_column="difficulty")
    with pytest.raises(MathDataError, match="eval_size=20 leaves no training rows of the 20 in .*math_sample.jsonl"):
        MathDatasetTasks(path=str(SAMPLE), eval_size=20)
    with pytest.raises(MathDataError, match="Unknown split"):
        MathDatasetTasks(path=str(SAMPLE), split="test")


def test_rows_without_a_numeric_answer_name_the_file_and_rows(tmp_path):
    rows = [{"question": "a", "answer": "#### 1"}, {"question": "b", "answer": "#### x"},
            {"question": "", "answer": "3"}, {"question": "d", "answer": "The answer is 4"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(MathDataError, match=rf"3 rows of {re.escape(str(bad))} .* 'answer' \(first rows: \[1, 2, 3\]\)"):
        MathDatasetTasks(path=str(bad), eval_size=1)


def test_float_answers_are_refused_naming_the_file_and_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    floats = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": pa.array([0.1 * 3, 2.0], pa.float64())}), floats)
    with pytest.raises(MathDataError, match=re.escape(f"{floats} column 'answer' holds floating-point answers (rows "
                                                      f"[0, 1], e.g. 0.30000000000000004)")) as excinfo:
        MathDatasetTasks(path=str(floats), eval_size=1)
    assert "write the answers as strings or integers" in str(excinfo.value)
    # JSON reads an integer beyond int64 as a float, and so the whole column.
    rows = [{"question": "a", "answer": 1}, {"question": "b", "answer": 10**20 + 1}]
    beyond_int64 = write_jsonl(tmp_path / "big.jsonl", rows)
    with pytest.raises(MathDataError, match=re.escape(f"{beyond_int64} column 'answer' holds floating-point answers")):
        MathDatasetTasks(path=str(beyond_int64), eval_size=1)


def test_an_empty_parquet_file_is_an_error_naming_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty)
    with pytest.raises(MathDataError, match=re.escape(str(empty))):
        MathDatasetTasks(path=str(empty))


def test_config_is_validated():
    with pytest.raises(ValidationError, match="extra"):
        MathDatasetConfig(path=str(SAMPLE), colum="question")
    with pytest.raises(ValidationError, match="eval_size"):
        MathDatasetConfig(path=str(SAMPLE), eval_size=0)
    with pytest.raises(ValidationError, match="no file"):
        MathDatasetConfig(path=[])
    with pytest.raises(ValidationError, match=r"plain split name, got 'train\[:10\]'"):
        MathDatasetConfig(path=str(SAMPLE), split="train[:10]")
    with pytest.raises(ValidationError, match="prompt_template has no"):
        MathDatasetConfig(path=str(SAMPLE), prompt_template="Q: {problem}")
    with pytest.raises(ValidationError, match="format"):
        MathDatasetConfig(path=str(SAMPLE), format="csv")
    with pytest.raises(MathDataError, match="distinct names"):
        MathDatasetTasks(path=[str(SAMPLE), str(SAMPLE)])
