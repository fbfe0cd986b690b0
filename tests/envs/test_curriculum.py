import math
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from envs import (
    ArithmeticTasks,
    CurriculumConfig,
    EnvError,
    SECCurriculum,
    TaskSampler,
    UniformCurriculum,
    make_curriculum,
    mean_abs_advantage_by_category,
)


def test_sec_update_by_hand():
    sec = SECCurriculum(["easy", "hard"], alpha=0.5, tau=1.0)
    sec.update({"easy": 1.0})
    assert sec.q == {"easy": 0.5, "hard": 0.0}
    sec.update({"easy": 0.0, "hard": 2.0})
    assert sec.q == {"easy": 0.25, "hard": 1.0}  # 0.5*0 + 0.5*0.5 ; 0.5*2 + 0.5*0


def test_sec_softmax_by_hand():
    sec = SECCurriculum(["easy", "hard"], alpha=1.0, tau=0.5)
    sec.update({"easy": 0.5, "hard": 1.0})
    e_easy, e_hard = math.exp(0.5 / 0.5), math.exp(1.0 / 0.5)
    probs = sec.probabilities()
    assert probs["easy"] == pytest.approx(e_easy / (e_easy + e_hard))
    assert probs["hard"] == pytest.approx(e_hard / (e_easy + e_hard))
    rng = np.random.default_rng(0)
    counts = Counter(sec.sample_category(rng) for _ in range(4000))
    assert counts["hard"] / 4000 == pytest.approx(probs["hard"], abs=0.03)


def test_sec_validates():
    with pytest.raises(EnvError, match="alpha=0"):
        SECCurriculum(["a"], alpha=0.0, tau=1.0)
    with pytest.raises(EnvError, match="unknown categories"):
        SECCurriculum(["a"], alpha=0.5, tau=1.0).update({"b": 1.0})
    with pytest.raises(ValidationError):
        CurriculumConfig(kind="sec", tau=0.0)


def test_mean_abs_advantage_by_category():
    groups = [("a", [1.0, -1.0]), ("a", [0.0, 0.0, 3.0, -3.0]), ("b", [0.5, -0.5, 0.5, -0.5])]
    # a: mean(|1|,|-1|) = 1 and mean(0,0,3,3) = 1.5 -> 1.25 ; b: 0.5
    assert mean_abs_advantage_by_category(groups) == {"a": 1.25, "b": 0.5}


def test_curriculum_is_off_by_default():
    assert isinstance(make_curriculum(CurriculumConfig(), ["carries=0"]), UniformCurriculum)


def test_task_sampler_follows_the_curriculum():
    source = ArithmeticTasks()
    sec = make_curriculum(CurriculumConfig(kind="sec", alpha=1.0, tau=0.1), source.categories)
    sec.update({"carries=1": 1.0})  # softmax([0, 10]): almost always carries=1
    sampler = TaskSampler(source, sec, seed=0)
    counts = Counter(sampler.next_task().category for _ in range(200))
    assert counts["carries=1"] >= 195
