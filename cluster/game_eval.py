"""The exact exploitability of the policy's Kuhn poker strategy.

The policy's strategy is read off the model itself: at each of the 12 information sets, the
probability of the aggressive move (bet or call) against the passive one (check or fold), from
the next-token distribution over those two letters, given the very context the rollout worker
builds in a game (the observation rendered as an episode's first, and for player 1's second
decision its own first move, "c" then EOS, and the next observation after it). Scored by the
learner, whose weights are the newest; solved exactly (envs/games/exploitability.py).
"""

from __future__ import annotations

from collections.abc import Callable

from actors.rendering import make_renderer
from envs import Observation
from envs.games.exploitability import exploitability, expected_value, infoset_context, strategy_from_policy
from envs.games.kuhn import INFOSETS, KUHN_POKER, YOUR_MOVE, KuhnState

Score = Callable[[list[list[int]], list[list[int]]], list[list[float]]]  # contexts, candidate ids -> probabilities


def infoset_context_ids(tokenizer, infoset: str) -> list[int]:
    """The token context of the acting player when it reaches `infoset`."""
    renderer = make_renderer(tokenizer)
    texts = infoset_context(infoset)
    ids = renderer.first(Observation(texts[0]))
    for move, observation in zip(texts[1::2], texts[2::2]):
        ids += tokenizer(move, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += renderer.next(Observation(observation), last_token=tokenizer.eos_token_id)
    return ids


def _legal_moves(infoset: str) -> tuple[str, str]:
    """(passive, aggressive) at the information set (they depend on the betting history only)."""
    return KUHN_POKER.legal_moves(KuhnState("JQ", infoset.removesuffix(YOUR_MOVE).split(":")[1]))


def kuhn_exploitability(tokenizer, score: Score) -> dict[str, float]:
    infosets = [*INFOSETS[0], *INFOSETS[1]]
    contexts = [infoset_context_ids(tokenizer, infoset) for infoset in infosets]
    candidates = [[tokenizer.convert_tokens_to_ids(move) for move in _legal_moves(infoset)] for infoset in infosets]
    probabilities = score(contexts, candidates)
    aggressive = {infoset: p[1] / (p[0] + p[1]) for infoset, p in zip(infosets, probabilities)}
    p1, p2 = strategy_from_policy(aggressive.__getitem__)
    return {"eval_exploitability": exploitability(p1, p2), "eval_kuhn_p1_value": expected_value(p1, p2),
            "eval_kuhn_legal_mass": sum(sum(p) for p in probabilities) / len(probabilities)}
