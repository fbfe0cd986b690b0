import numpy as np

from buffer import learning_signal
from buffer.priority import annealed_beta, importance_weights


def test_learning_signal_hand_computed():
    # mean 0.25; |deviations| 0.25, 0.25, 0.25, 0.75 -> 1.5 / 4
    assert learning_signal(np.array([0.0, 0.0, 0.0, 1.0])) == 0.375
    assert learning_signal(np.array([0.0, 1.0])) == 0.5


def test_learning_signal_is_exactly_zero_for_equal_rewards():
    assert learning_signal(np.array([0.1, 0.1, 0.1])) == 0.0  # 0.1 * 3 / 3 != 0.1 in floating point
    assert learning_signal(np.array([1.0])) == 0.0


def test_importance_weights_hand_computed():
    # N = 4, beta = 0.5: raw = (4 P)^-0.5 = [1/sqrt(2), 1, sqrt(2)]; max = sqrt(2)
    weights = importance_weights(np.array([0.5, 0.25, 0.125]), 4, 0.5)
    np.testing.assert_allclose(weights, [0.5, 1 / np.sqrt(2), 1.0])


def test_beta_anneals_linearly_then_holds():
    assert annealed_beta(0.4, 1.0, 10, 0) == 0.4
    assert np.isclose(annealed_beta(0.4, 1.0, 10, 5), 0.7)
    assert annealed_beta(0.4, 1.0, 10, 25) == 1.0
    assert annealed_beta(0.4, 1.0, 0, 25) == 0.4
