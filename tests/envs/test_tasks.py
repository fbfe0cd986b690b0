import numpy as np
import pytest
from pydantic import ValidationError

from envs import ArithmeticTaskConfig, ArithmeticTasks, EnvError, UnknownNameError, make_task_source
from envs.tasks import addition_task, count_carries


@pytest.mark.parametrize(("a", "b", "carries"), [(0, 0, 0), (23, 45, 0), (25, 45, 1), (95, 5, 2), (999, 1, 3), (7, 3, 1)])
def test_count_carries_by_hand(a, b, carries):
    assert int(count_carries(a, b)) == carries
    assert addition_task(a, b).category == f"carries={carries}"


def test_count_carries_elementwise_matches_scalar():
    a, b = np.array([0, 25, 95, 999]), np.array([0, 45, 5, 1])
    assert count_carries(a, b).tolist() == [0, 1, 2, 3]


def test_addition_task_fields():
    task = addition_task(23, 45)
    assert (task.task_id, task.prompt, task.answer) == ("add/23+45", "23+45=", "68")


def test_eval_set_is_fixed_and_disjoint_from_training():
    source = ArithmeticTasks()
    held_out = source.eval_tasks()
    assert len(held_out) == 256 and len({t.task_id for t in held_out}) == 256
    assert held_out == ArithmeticTasks().eval_tasks() == source.eval_tasks()  # fixed across instances and calls
    held_out_pairs = {(t.metadata["a"], t.metadata["b"]) for t in held_out}
    forbidden = held_out_pairs | {(b, a) for a, b in held_out_pairs}  # b+a is the same problem
    train = source.train_tasks()
    assert not forbidden & {(t.metadata["a"], t.metadata["b"]) for t in train}
    assert len(train) == 50 * 50 - len(forbidden)
    rng = np.random.default_rng(0)
    sampled = {(t.metadata["a"], t.metadata["b"]) for t in (source.sample(rng) for _ in range(3000))}
    assert not sampled & forbidden
    assert len(sampled) > 1000  # the stream covers the training pool, not a few tasks


def test_eval_set_does_not_depend_on_training_seed_but_on_eval_seed():
    assert ArithmeticTasks(eval_seed=7).eval_tasks() != ArithmeticTasks().eval_tasks()


def test_sampling_by_category():
    source = ArithmeticTasks()
    assert source.categories == ["carries=0", "carries=1"]
    rng = np.random.default_rng(1)
    assert all(source.sample(rng, "carries=1").category == "carries=1" for _ in range(100))
    with pytest.raises(EnvError, match="carries=9"):
        source.sample(rng, "carries=9")


def test_training_stream_is_seeded():
    source = ArithmeticTasks()

    def stream(seed):
        rng = np.random.default_rng(seed)
        return [source.sample(rng).task_id for _ in range(20)]

    assert stream(3) == stream(3)
    assert stream(3) != stream(4)


def test_config_is_validated():
    with pytest.raises(ValidationError, match="eval_size"):
        ArithmeticTaskConfig(max_operand=9, eval_size=50)
    with pytest.raises(ValidationError, match="extra"):
        ArithmeticTaskConfig(max_operands=9)


def test_task_source_registry():
    assert isinstance(make_task_source("arithmetic", max_operand=40), ArithmeticTasks)
    with pytest.raises(UnknownNameError, match="arithmetic"):
        make_task_source("gsm8k")
