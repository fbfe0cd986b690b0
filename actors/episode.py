"""The episode loop: run envs against the engine turn by turn and record what the policy generated.

All active episodes advance together, one batched engine call per turn. Tokens the policy
sampled get loss_mask 1, their behaviour logprob and the policy version; observation tokens
that the env appends between turns get loss_mask 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from actors.engine import VLLMEngine
from buffer.schema import NO_VERSION, Trajectory
from envs import Action, Env, Task


@dataclass
class Episode:
    task: Task
    env: Env
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    reward: float = 0.0
    reward_parts: dict[str, float] = field(default_factory=dict)
    finish_reason: str = "stop"
    num_turns: int = 0
    done: bool = False
    error: str | None = None
    started_at: float = field(default_factory=time.time)

    def context(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    def append(self, token_ids: list[int], *, generated: bool, logprobs: list[float] | None = None, version: int = NO_VERSION) -> None:
        self.completion_ids += token_ids
        self.loss_mask += [int(generated)] * len(token_ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(token_ids)
        self.versions += [version if generated else NO_VERSION] * len(token_ids)

    def to_trajectory(self) -> Trajectory:
        return Trajectory(
            prompt_ids=self.prompt_ids, completion_ids=self.completion_ids, loss_mask=self.loss_mask,
            behavior_logprobs=self.logprobs, policy_versions=self.versions, reward=self.reward,
            reward_parts=self.reward_parts, finish_reason=self.finish_reason, num_turns=self.num_turns,
            env_name=self.env.name, task_id=self.task.task_id, timings={"episode_s": time.time() - self.started_at},
        )


class EpisodeRunner:
    def __init__(self, engine: VLLMEngine, tokenizer, max_new_tokens: int, max_turns: int) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_turns = max_turns

    def run(self, tasks: list[Task], envs: list[Env], *, temperature: float, version: int) -> list[Episode]:
        """One episode per (task, env) pair, all advanced in lock-step."""
        episodes = [self._start(task, env) for task, env in zip(tasks, envs, strict=True)]
        while active := [e for e in episodes if not e.done]:
            self._turn(active, temperature, version)
        return episodes

    def _start(self, task: Task, env: Env) -> Episode:
        observation = env.reset(task)
        episode = Episode(task=task, env=env, prompt_ids=self.tokenizer(observation.text)["input_ids"])
        if observation.error:
            episode.done, episode.error, episode.finish_reason = True, observation.error, "error"
        return episode

    def _turn(self, active: list[Episode], temperature: float, version: int) -> None:
        room = [self.engine.max_model_len - len(e.context()) for e in active]
        for episode, left in zip(active, room):
            if left <= 0:  # overlong: the context filled the engine's window before the episode ended
                episode.done, episode.finish_reason = True, "length"
        runnable = [(e, min(left, self.max_new_tokens)) for e, left in zip(active, room) if left > 0]
        if not runnable:
            return
        completions = self.engine.generate(
            [e.context() for e, _ in runnable], max_tokens=[m for _, m in runnable], temperature=temperature)
        for (episode, _), completion in zip(runnable, completions):
            episode.append(completion.token_ids, generated=True, logprobs=completion.logprobs, version=version)
            episode.num_turns += 1
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            self._observe(episode, Action(text, tuple(completion.token_ids), completion.finish_reason))

    def _observe(self, episode: Episode, action: Action) -> None:
        result = episode.env.step(action)
        if result.error:
            episode.done, episode.error, episode.finish_reason = True, result.error, "error"
            return
        episode.reward, episode.reward_parts = float(result.reward), dict(result.reward_parts)
        episode.finish_reason = action.finish_reason
        if result.done or result.observation is None:
            episode.done = True
        elif episode.num_turns >= self.max_turns:
            episode.done, episode.finish_reason = True, "length"
        else:
            observed = self.tokenizer(result.observation.text, add_special_tokens=False)["input_ids"]
            episode.append(observed, generated=False)
