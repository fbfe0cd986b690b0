"""The episode loop: keeps one engine busy with many episodes that advance independently.

A group is G episodes of one task. Its first turns share a prompt, so they go to the engine as
one request for G samples; every later turn is a request of its own, sent as soon as that
episode's env has answered. Env calls run on other threads (actors/env_calls.py), so while one
episode waits for a slow tool the engine keeps generating for the others, and new groups can
join the running batch whenever the caller starts them. A group started with `inline=True`
calls its envs on the loop's own thread (for envs that are pure computation: see env_calls.py).
A group is handed to its `on_done` callback the moment its last episode ends.

    loop.start(key, task, envs, sampling, on_done)    # as many groups as the caller wants in flight
    while ...:
        loop.pump()                                   # one engine step, then the env answers that are in

`hold()` stops new requests from reaching the engine (they queue) so that the caller can swap
weights once the engine has drained; `release()` sends them on.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.engine import Engine, Finished
from actors.env_calls import EnvCalls, EnvCallTimeout
from actors.episode import Episode, EpisodeLimits, RoleContext
from actors.rendering import Renderer, RenderError
from actors.sampling import SamplingConfig
from envs import Action, Env, EpisodeErrorCounter, Observation, StepResult, Task

log = logging.getLogger(__name__)


@dataclass
class GroupRun:
    key: str
    task: Task
    episodes: list[Episode]
    sampling: SamplingConfig
    on_done: Callable[["GroupRun"], None]
    open: int  # episodes not yet finished
    resets_pending: int
    inline: bool  # env calls on the loop's thread instead of the env-call threads
    first_tokens: dict[str, list[int]] = field(default_factory=dict)  # rendered first observations, by content
    over_budget: int = 0  # episodes whose first observation left no room to generate (PromptOverBudget)


class EpisodeLoop:
    def __init__(self, engine: Engine, renderer: Renderer, limits: EpisodeLimits, errors: EpisodeErrorCounter,
                 max_env_threads: int = 32) -> None:
        self.engine = engine
        self.renderer = renderer
        self.limits = limits
        self.errors = errors
        self.calls = EnvCalls(limits.step_timeout_s, max_env_threads)
        self.budget = min(limits.max_tokens or engine.max_model_len, engine.max_model_len)
        self._groups: dict[str, GroupRun] = {}
        self._requests: dict[str, tuple[GroupRun, list[int]]] = {}  # request id -> group, episodes it continues
        self._in_engine: set[str] = set()
        self._held: list[tuple[str, list[int], SamplingConfig, int, int]] = []
        self._holding = False
        self._ids = itertools.count()
        # A request's context fit the budget and went to the engine (or waits for it, held): prompts
        # can fit. Set at the first turn (later turns come only after one), long before its group ends.
        self.prompt_fitted = False

    # -- what the caller sees ------------------------------------------------------------------
    @property
    def groups_in_flight(self) -> int:
        return len(self._groups)

    @property
    def idle(self) -> bool:
        return not self._groups

    @property
    def engine_drained(self) -> bool:
        """No request is in the engine (held ones may be waiting)."""
        return not self._in_engine

    def start(self, key: str, task: Task, envs: list[Env], sampling: SamplingConfig,
              on_done: Callable[[GroupRun], None], inline: bool = False) -> None:
        """Begin one group: an episode of `task` per env (already wrapped in SafeEnv)."""
        if key in self._groups:
            raise ValueError(f"group {key!r} is already in flight")
        episodes = [Episode(task=task, env=env) for env in envs]
        group = GroupRun(key, task, episodes, sampling, on_done, open=len(episodes), resets_pending=len(episodes),
                         inline=inline)
        self._groups[key] = group
        for index, episode in enumerate(episodes):
            self.calls.submit((key, index), episode.env.reset, task, inline=inline)

    def pump(self, wait_s: float = 0.0) -> None:
        """One engine step if the engine has work, then every env answer that is in (waiting up to
        `wait_s` for one when the engine had nothing to do)."""
        stepped = self.engine.has_unfinished()
        if stepped:
            for finished in self.engine.step():
                self._generated(finished)
        elif not self.calls.pending:
            time.sleep(wait_s)  # nothing to do: do not spin
        for (key, index), result in self.calls.poll(0.0 if stepped else wait_s):
            group = self._groups.get(key)
            if group is not None:
                self._answered(group, index, result)

    def hold(self) -> None:
        self._holding = True

    def release(self) -> None:
        self._holding = False
        held, self._held = self._held, []
        for request in held:
            self._add(request)

    def close(self) -> None:
        if self._in_engine:
            self.engine.abort(list(self._in_engine))
        self.calls.close()

    # -- generation ------------------------------------------------------------------------------
    def _request(self, group: GroupRun, indices: list[int], context: list[int]) -> None:
        """Ask for one sample per episode in `indices`, all continuing `context`."""
        if not context:  # an empty observation, from a tokenizer that adds no BOS: no engine takes it
            self._finish_all(group, indices, "error", "empty prompt: the observation rendered to no tokens")
            return
        room = self.budget - len(context)
        if room < 1:  # overlong: the context filled the budget before the episode ended
            self._finish_all(group, indices, "length")
            return
        self.prompt_fitted = True
        request_id = f"{group.key}/{next(self._ids)}"
        self._requests[request_id] = (group, indices)
        request = (request_id, context, group.sampling, min(group.sampling.max_new_tokens, room), len(indices))
        if self._holding:
            self._held.append(request)
        else:
            self._add(request)

    def _add(self, request: tuple[str, list[int], SamplingConfig, int, int]) -> None:
        request_id = request[0]
        try:
            self.engine.add(*request)
        except ValueError as e:  # the engine refused this request: only its episodes fail
            group, indices = self._requests.pop(request_id)
            self._finish_all(group, indices, "error", f"{type(e).__name__}: {e}")
            return
        self._in_engine.add(request_id)

    def _first_turns(self, group: GroupRun) -> None:
        """Episodes whose first contexts are equal share one request of n samples."""
        by_context: dict[tuple[int, ...], list[int]] = {}
        for index, episode in enumerate(group.episodes):
            if not episode.done:
                by_context.setdefault(tuple(episode.roles[episode.acting].context()), []).append(index)
        for context, indices in by_context.items():
            if len(context) >= self.budget:  # not a run of bad luck, as a long episode is: a setting to change
                for index in indices:  # counted where env errors are, so that status and metrics show it
                    self.errors.record(group.episodes[index].env.name, "PromptOverBudget")
                group.over_budget += len(indices)
                self._finish_all(group, indices, "error", f"the first observation is {len(context)} tokens, which "
                                 f"leaves no room to generate under the budget of {self.budget} (rollout.limits."
                                 "max_tokens, rollout.engine.max_model_len)")
                continue
            self._request(group, indices, list(context))

    def _generated(self, finished: Finished) -> None:
        self._in_engine.discard(finished.request_id)
        group, indices = self._requests.pop(finished.request_id)
        for index, sample in zip(indices, finished.samples, strict=True):
            episode = group.episodes[index]
            episode.roles[episode.acting].append_model(sample)
            episode.last_finish = sample.finish_reason
            action = Action(self.renderer.text(sample.token_ids), tuple(sample.token_ids), sample.finish_reason,
                            max(sample.versions, default=self.engine.version))
            self.calls.submit((group.key, index), episode.env.step, action, inline=group.inline)

    # -- env answers -----------------------------------------------------------------------------
    def _answered(self, group: GroupRun, index: int, result: Observation | StepResult | Exception) -> None:
        episode = group.episodes[index]
        resetting = not episode.roles  # no role has an observation yet: this answers its reset
        try:
            if isinstance(result, Exception):
                self._failed(group, episode, result)
            elif result.error:
                self._finish(group, episode, "error", result.error)
            elif resetting:
                self._opened(group, episode, result)
            else:
                self._stepped(group, index, result)
        except RenderError as e:  # the template or tokenizer refused an observation
            self._finish(group, episode, "error", f"RenderError: {e}")
        if resetting:  # however the reset ended, the group's first turns wait for it no longer
            group.resets_pending -= 1
            if group.resets_pending == 0:
                self._first_turns(group)

    def _failed(self, group: GroupRun, episode: Episode, error: Exception) -> None:
        # SafeEnv turns env and reward exceptions into error results; what arrives here is a hung
        # call, or a failure of the worker's own code around it.
        self.errors.record(episode.env.name, type(error).__name__)
        reason = "timeout" if isinstance(error, EnvCallTimeout) else "error"
        self._finish(group, episode, reason, f"{type(error).__name__}: {error}")

    def _opened(self, group: GroupRun, episode: Episode, observation: Observation) -> None:
        """Its reset answered: the first observation starts the context of the role it is for."""
        episode.roles[observation.role] = RoleContext(observation.role, self._first_tokens(group, observation))
        episode.acting = observation.role

    def _first_tokens(self, group: GroupRun, observation: Observation) -> list[int]:
        """The G episodes of a group mostly open on the same observation: tokenize it once."""
        key = json.dumps([observation.text, observation.messages])
        if key not in group.first_tokens:
            group.first_tokens[key] = self.renderer.first(observation)
        return list(group.first_tokens[key])  # each context owns its list

    def _stepped(self, group: GroupRun, index: int, result: StepResult) -> None:
        episode = group.episodes[index]
        episode.roles[episode.acting].add_reward(result.reward, result.reward_parts)
        for role, reward in result.role_rewards.items():
            if role in episode.roles:
                episode.roles[role].add_reward(reward, {"outcome": reward})
        if result.done or result.observation is None:
            episode.metrics = dict(result.metrics)
            self._finish(group, episode, episode.last_finish)
            return
        observation = result.observation
        role = episode.roles.get(observation.role)
        if role is None:  # a game's other player sees the board for the first time
            role = episode.roles[observation.role] = RoleContext(observation.role, self.renderer.first(observation))
            tokens = []
        else:
            tokens = self.renderer.next(observation, role.last_token)
        if len(role) + len(tokens) >= self.budget:  # overlong: no room left for another turn
            self._finish(group, episode, "length")
            return
        role.append_env(tokens)
        episode.acting = observation.role
        if role.num_turns >= self.limits.max_turns:
            self._finish(group, episode, "max_turns")
        else:
            self._request(group, [index], role.context())

    def _finish_all(self, group: GroupRun, indices: list[int], reason: str, error: str | None = None) -> None:
        for index in indices:
            self._finish(group, group.episodes[index], reason, error)

    def _finish(self, group: GroupRun, episode: Episode, reason: str, error: str | None = None) -> None:
        if episode.done:
            return
        episode.finish(reason, error)
        group.open -= 1
        if group.open == 0:
            del self._groups[group.key]
            group.on_done(group)
