import math
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from envs import (
    CurriculumConfig,
    EnvError,
    SECCurriculum,
    UniformCurriculum,
    make_curriculum,
    mean_abs_advantage_by_category,
)
from envs.curriculum import DUMPCurriculum


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
    with pytest.raises(ValidationError, match=r"tau\s+Input should be greater than 0"):
        CurriculumConfig(kind="sec", tau=0.0)


def test_mean_abs_advantage_by_category():
    groups = [("a", [1.0, -1.0]), ("a", [0.0, 0.0, 3.0, -3.0]), ("b", [0.5, -0.5, 0.5, -0.5])]
    # a: mean(|1|,|-1|) = 1 and mean(0,0,3,3) = 1.5 -> 1.25 ; b: 0.5
    assert mean_abs_advantage_by_category(groups) == {"a": 1.25, "b": 0.5}


def test_curriculum_is_off_by_default():
    assert isinstance(make_curriculum(CurriculumConfig(), ["carries=0"]), UniformCurriculum)


def test_dump_scores_by_hand():
    dump = DUMPCurriculum(["easy", "hard"], ucb_c=0.1, tau=1.0, window=2)
    assert dump.probabilities() == {"easy": 0.5, "hard": 0.5}  # nothing observed: explore evenly
    dump.update({"easy": 0.5})
    assert dump.probabilities() == {"easy": 0.0, "hard": 1.0}  # hard was never observed: it comes first
    dump.update({"hard": 0.0})
    bonus = 0.1 * math.sqrt(math.log(2) / 1)  # total 2 observations, 1 each
    assert dump.scores() == pytest.approx({"easy": 0.5 + bonus, "hard": bonus})
    assert dump.probabilities()["easy"] == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 1))
    dump.update({"easy": 0.1})
    dump.update({"easy": 0.3})  # window 2: the 0.5 drops out, mean (0.1 + 0.3) / 2
    assert dump.scores()["easy"] == pytest.approx(0.2 + 0.1 * math.sqrt(math.log(4) / 3))
    restored = DUMPCurriculum(["easy", "hard"], ucb_c=0.1, tau=1.0, window=2)
    restored.load_state(dump.state())
    assert restored.scores() == dump.scores()


class EmptyReplay:
    """The learner of this test trains on every group at once: none waits in the replay."""

    def size(self) -> int:
        return 0


class SimulatedLearner:
    """Two task categories: on `learnable` the success rate p rises with each group trained on it
    (p = min(0.9, 0.1 + 0.02 n)), on `unsolvable` every episode fails. A group of 8 episodes has
    mean |A| = mean |R - mean R|; a group whose rewards are all equal has no signal, is not stored
    and so never reaches the learner: the workers report it to the admission controller instead."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.trained = {"learnable": 0, "unsolvable": 0}

    def play(self, category: str) -> float:
        """One group's mean |A|."""
        p = min(0.9, 0.1 + 0.02 * self.trained["learnable"]) if category == "learnable" else 0.0
        rewards = (self.rng.random(8) < p).astype(float)
        self.trained[category] += 1
        return float(np.mean(np.abs(rewards - rewards.mean())))


@pytest.mark.parametrize("config", [CurriculumConfig(kind="sec", alpha=0.5, tau=0.1),
                                    CurriculumConfig(kind="dump", ucb_c=0.1, tau=0.1)], ids=["sec", "dump"])
def test_the_curriculum_moves_to_the_category_that_can_be_learned(config):
    """The run's own path: the admission controller grants 16 groups a step with a category each,
    the workers report zero-signal groups, the learner the mean |A| of the others, for 30 steps.
    The numbers this test saw are in its assertion messages."""
    from cluster.admission import AdmissionController

    admission = AdmissionController(16, 0, config, ["learnable", "unsolvable"], seed=1, replay=EmptyReplay(),
                                    size_ttl_s=0)  # a simulated step takes microseconds: read the size every time
    learner = SimulatedLearner(0)
    start = admission.probabilities()
    history = []
    for _ in range(30):
        categories = admission.admit("w0", 16)
        signals = [(c, learner.play(c)) for c in categories]
        zero = Counter(c for c, signal in signals if signal == 0.0)
        admission.done("w0", len(signals), len(signals) - sum(zero.values()), dict(zero))
        trained = mean_abs_advantage_by_category((c, [s]) for c, s in signals if s > 0)
        counts = Counter(c for c, s in signals if s > 0)
        probabilities = admission.update_curriculum({c: (trained[c], counts[c]) for c in trained})
        history.append(round(probabilities["learnable"], 3))
    print(f"{config.kind}: P(learnable) per step {history}; groups made {learner.trained}")
    assert start["learnable"] == 0.5, start
    # (the learnable category's signal shrinks as its success rate saturates near 0.9, so its
    # preference settles below 1; the unsolvable one never gives a signal)
    assert np.mean(history[-10:]) > 0.7, f"P(learnable) per step: {history}"
    assert learner.trained["learnable"] > 3 * learner.trained["unsolvable"], learner.trained
