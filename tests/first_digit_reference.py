"""The first_digit env's held-out accuracy counted on the learner's own weights, without a rollout
worker: the reference that the integration tests check a run's evaluation against."""

from __future__ import annotations

import numpy as np

from actors.rendering import make_renderer


def first_digit_accuracy(live, targets: str) -> dict[str, float]:
    """first_digit's held-out accuracy counted without the rollout worker, from the learner's next-token
    probabilities at each prompt (an episode succeeds when its first token is a target): greedy, the share
    of prompts whose most likely token is one; sampled (T=1), its expected value and the standard
    deviation of one pass's mean."""
    tokenizer, renderer, env = live.tokenizer, make_renderer(live.tokenizer), live.cfg.env.build_env()
    contexts = [renderer.first(env.reset(task)) for task in live.cfg.env.build_task_source().eval_tasks()]
    vocabulary = list(range(len(tokenizer)))
    is_target = np.array([tokenizer.decode([t], skip_special_tokens=True)[:1] in set(targets) for t in vocabulary])
    probabilities = np.array(live.learners.call_rank0("next_token_probabilities", contexts,
                                                      [vocabulary] * len(contexts)))
    success = probabilities[:, is_target].sum(axis=1)
    return {"greedy": float(is_target[probabilities.argmax(axis=1)].mean()), "sampled": float(success.mean()),
            "sampled_sd": float(np.sqrt((success * (1 - success)).sum()) / len(success))}
