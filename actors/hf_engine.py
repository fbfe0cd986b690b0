"""A static-batch inference engine on plain transformers, for small models on CPU.

vLLM's per-step scheduling costs more than the forward pass of a model of a few million
parameters on a CPU core (DESIGN.md: transformers was about 2x faster at 0.7M parameters), so for
such models `rollout.engine.kind: transformers` swaps in this engine behind the same `Engine`
interface. Each `step()` takes the queued requests (up to MAX_BATCH_SEQS sequences), generates
every one of them to completion in one left-padded, KV-cached batch per sampling setting, and
returns them all: weights change only between steps, so every token of a sample carries one
version, and a request never waits behind a longer one across steps. Behaviour logprobs are the
raw model's log-softmax at each sampled token (vLLM's default `raw_logprobs`), which is what the
learner recomputes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from actors.engine import Finished, Sample
from actors.engine_config import EngineConfig
from actors.sampling import SamplingConfig

MAX_BATCH_SEQS = 256  # sequences per step: bounds the KV cache one step holds (n samples count n times)


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingConfig
    max_tokens: int
    n: int


class TransformersEngine:
    """Only the thread that owns it may call it (the same contract as VLLMEngine)."""

    def __init__(self, model_path: str, config: EngineConfig, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)  # one of TRANSFORMERS_DTYPES
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)  # stop strings are matched on text
        self.max_model_len = config.max_model_len
        self.version = 0
        self._eos = _eos_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._eos, default=0)
        self._generator = torch.Generator().manual_seed(seed)
        self._queue: dict[str, _Request] = {}
        self._tensors = self.model.state_dict(keep_vars=True)  # HF names, tied weights under each name

    def add(self, request_id: str, prompt_ids: list[int], sampling: SamplingConfig, max_tokens: int, n: int) -> None:
        if not prompt_ids or max_tokens < 1 or n < 1:
            raise ValueError(f"request {request_id}: needs a prompt, max_tokens >= 1 and n >= 1 "
                             f"(got {len(prompt_ids)} prompt tokens, max_tokens={max_tokens}, n={n})")
        if len(prompt_ids) + max_tokens > self.max_model_len:
            raise ValueError(f"request {request_id}: {len(prompt_ids)} prompt tokens + {max_tokens} new tokens exceed "
                             f"max_model_len {self.max_model_len}")
        if sampling.repetition_penalty != 1.0:
            raise ValueError("the transformers engine does not apply repetition_penalty; use the vllm engine")
        self._queue[request_id] = _Request(list(prompt_ids), sampling, max_tokens, n)

    def has_unfinished(self) -> bool:
        return bool(self._queue)

    def abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._queue.pop(request_id, None)

    def step(self) -> list[Finished]:
        taken = self._take_batch()
        samples: dict[str, list[Sample]] = {request_id: [] for request_id in taken}
        samplings: list[SamplingConfig] = []  # distinct, in queue order (a list field makes them unhashable)
        for request in taken.values():
            if request.sampling not in samplings:
                samplings.append(request.sampling)
        for sampling in samplings:
            requests = {request_id: request for request_id, request in taken.items() if request.sampling == sampling}
            generated = iter(self._generate(list(requests.values()), sampling))
            for request_id, request in requests.items():
                samples[request_id] = [next(generated) for _ in range(request.n)]
        return [Finished(request_id, samples[request_id]) for request_id in taken]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """In place, by HF parameter name, all or nothing: every name and shape is checked before
        anything is copied."""
        weights = list(named_tensors)
        unknown = [name for name, _ in weights if name not in self._tensors]
        if unknown:
            raise ValueError(f"weights for parameters this model does not have: {unknown[:5]}")
        mismatched = [f"{name} {tuple(tensor.shape)} (model: {tuple(self._tensors[name].shape)})"
                      for name, tensor in weights if tensor.shape != self._tensors[name].shape]
        if mismatched:
            raise ValueError(f"weights of the wrong shape: {mismatched[:5]}")
        with torch.no_grad():
            for name, tensor in weights:
                self._tensors[name].copy_(tensor)
        self.version = version

    def _take_batch(self) -> dict[str, _Request]:
        """The oldest queued requests, up to MAX_BATCH_SEQS sequences (at least one request)."""
        taken: dict[str, _Request] = {}
        sequences = 0
        for request_id, request in self._queue.items():
            if taken and sequences + request.n > MAX_BATCH_SEQS:
                break
            taken[request_id] = request
            sequences += request.n
        for request_id in taken:
            del self._queue[request_id]
        return taken

    @torch.no_grad()
    def _generate(self, requests: list[_Request], sampling: SamplingConfig) -> list[Sample]:
        """Each request's n samples (request by request), every one to EOS, a stop string or its
        token limit, in one KV-cached batch. A prompt is run through the model once and its cache
        repeated for its n samples (a group's G samples share one prompt)."""
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for index, request in enumerate(requests):  # left padding: every row's next token is at the last column
            input_ids[index, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[index, width - len(request.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        prompt_of_row = torch.repeat_interleave(torch.arange(len(requests)), torch.tensor([r.n for r in requests]))
        out.past_key_values.reorder_cache(prompt_of_row)
        logits, mask = out.logits[prompt_of_row, -1], mask[prompt_of_row]
        next_position = positions[prompt_of_row, -1:] + 1
        limits = [r.max_tokens for r in requests for _ in range(r.n)]
        rows = len(limits)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        reasons: list[str | None] = [None] * rows
        for _ in range(max(limits)):
            logits = logits.float()
            picked = pick_tokens(logits, sampling, self._generator)
            chosen = torch.log_softmax(logits, -1).gather(1, picked[:, None]).squeeze(1)
            for row, (token, logprob) in enumerate(zip(picked.tolist(), chosen.tolist())):
                if reasons[row] is None:
                    tokens[row].append(token)
                    logprobs[row].append(logprob)
                    reasons[row] = self._finish_reason(tokens[row], limits[row], sampling.stop)
            if all(reasons):
                break
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            out = self.model(input_ids=picked[:, None], attention_mask=mask, position_ids=next_position,
                             past_key_values=out.past_key_values, use_cache=True)
            logits, next_position = out.logits[:, -1], next_position + 1
        # every row has its reason by now: the loop runs to the longest limit, and a row at its limit is done
        return [Sample(tokens[row], logprobs[row], [self.version] * len(tokens[row]), reasons[row])
                for row in range(rows)]

    def _finish_reason(self, tokens: list[int], limit: int, stop: list[str]) -> str | None:
        if tokens[-1] in self._eos:
            return "stop"
        if stop and any(s in self.tokenizer.decode(tokens, skip_special_tokens=True) for s in stop):
            return "stop"  # as in vLLM: matched on text without special tokens; the tokens keep the one that completed it
        return "length" if len(tokens) >= limit else None


def pick_tokens(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `logits` [rows, vocab]: greedy at temperature 0, else sampled from the
    tempered distribution restricted as vLLM does: min_p and top_k first, then top_p on what they
    left, renormalised."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    scores = logits / sampling.temperature
    if sampling.min_p > 0:  # p_i < min_p * p_max  <=>  score_i < max score + log(min_p)
        floor = scores.max(-1, keepdim=True).values + math.log(sampling.min_p)
        scores = scores.masked_fill(scores < floor, float("-inf"))
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = scores.topk(sampling.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, -1)
    if sampling.top_p < 1:
        ordered, order = probs.sort(-1, descending=True)
        outside = ordered.cumsum(-1) - ordered >= sampling.top_p  # a token goes once the mass before it reaches p
        probs = probs.scatter(1, order, ordered.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _eos_ids(*sources: int | list[int] | None) -> set[int]:
    ids: set[int] = set()
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(source)
    return ids
