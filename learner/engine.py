"""The policy model under DeepSpeed: per-token logprobs, backward, optimizer step, weights, checkpoints.

Gradient accumulation is caller-owned (`managed_gradient_accumulation: false`): micro-batches are
packed by a token budget, so their count varies per step; `backward()` only accumulates and `step()`
reduces across data-parallel ranks (DeepSpeed averages them) and updates.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from learner.config import LearnerConfig, merge_nested


def _on_gpu() -> bool:
    return torch.cuda.is_available()


COLLECTIVE_TIMEOUT = timedelta(minutes=5)  # a peer that died mid-collective fails the others within this


def use_this_environments_op_cache() -> None:
    """DeepSpeed JIT-builds its CPU comm op with ninja (about 40 s of two cores). One build cache per
    virtualenv, so that two of them on one machine do not rebuild it over each other; and built by
    the virtualenv's own ninja (the pip one DeepSpeed depends on): a system ninja of another version
    hashes the command lines differently and rebuilds whatever the other one built."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    own_bin = os.path.join(sys.prefix, "bin")
    path = os.environ.get("PATH", "")
    if not path.startswith(own_bin + os.pathsep):
        os.environ["PATH"] = own_bin + os.pathsep + path


def build_comm_op() -> None:
    """Build DeepSpeed's CPU comm op into this virtualenv's cache (`make setup` runs it once), the
    way every learner rank loads it."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    use_this_environments_op_cache()
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load()


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Join the learners' process group: gloo on CPU, NCCL on GPU."""
    os.environ.update(
        MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK="0" if not _on_gpu() else str(rank % torch.cuda.device_count()),
    )
    if not _on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must be set before deepspeed is imported
    use_this_environments_op_cache()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if _on_gpu() else "gloo", timeout=COLLECTIVE_TIMEOUT)


def deepspeed_config(cfg: LearnerConfig, world_size: int, dtype: torch.dtype) -> dict[str, Any]:
    derived: dict[str, Any] = {
        # Nominal sizes: Tidal packs its own micro-batches and calls step() once per update batch.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": 0.0 if tidal_clips_gradients(cfg, dtype) else cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch AdamW: DeepSpeed's fused Adam needs CUDA
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return merge_nested(derived, cfg.deepspeed or {})


def tidal_clips_gradients(cfg: LearnerConfig, dtype: torch.dtype) -> bool:
    """DeepSpeed measures and reports the global gradient norm only inside its ZeRO and bf16
    optimizers; with a plain fp32 optimizer (stage 0) Tidal clips, and measures, in a pre-step hook."""
    return cfg.zero_stage == 0 and dtype == torch.float32


def lr_multiplier(step: int, warmup_steps: int, schedule: str, total_steps: int) -> float:
    """Linear warm-up, then constant or half-cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class CheckpointNotFoundError(FileNotFoundError):
    """A directory to resume from holds no loadable DeepSpeed checkpoint."""


class ReferencePolicy:
    """The frozen starting policy, for the KL penalty: plain torch, no optimizer state.
    (Replicated on every rank; a model too large for that needs a sharded copy.)"""

    def __init__(self, model_path: str, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM

        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return _next_token_logprobs(logits, input_ids)[0]


def _next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprob of each next token and the entropy of each next-token distribution, both [N, L-1], fp32."""
    logp_all = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    logprobs = logp_all.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


class PolicyEngine:
    def __init__(self, model_path: str, cfg: LearnerConfig, total_steps: int, world_size: int,
                 with_reference: bool = False) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda", torch.cuda.current_device()) if _on_gpu() else torch.device("cpu")
        self.dtype = {"auto": torch.bfloat16 if _on_gpu() else torch.float32,
                      "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                      weight_decay=cfg.optim.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, cfg.optim.warmup_steps, cfg.optim.schedule, total_steps))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule,
            config=deepspeed_config(cfg, world_size, self.dtype))
        self.world_size = world_size
        self.grad_clip = cfg.optim.grad_clip
        self._hook_grad_norm: float | None = None
        if tidal_clips_gradients(cfg, self.dtype):
            optimizer.register_step_pre_hook(self._clip_reduced_gradients)
        self.reference = ReferencePolicy(model_path, self.device, self.dtype) if with_reference else None

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logprob of each next token and the entropy of each next-token distribution, both [N, L-1], fp32."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        logits = self.engine(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return _next_token_logprobs(logits, input_ids)

    def backward(self, loss: torch.Tensor) -> None:
        # Each rank's loss is normalised by global counts, so the right gradient is the SUM over
        # ranks; DeepSpeed averages, hence the world_size factor.
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> tuple[float, bool]:
        """Reduce the accumulated gradients over the ranks, clip, update. Returns the norm before
        clipping and whether the update was applied: a non-finite gradient (a finite loss can still
        overflow in backward) is dropped, on every rank alike, and the weights stay as they were."""
        self._hook_grad_norm = None
        self.engine.step()
        norm = self._hook_grad_norm if self._hook_grad_norm is not None else self.engine.get_global_grad_norm()
        # DeepSpeed's ZeRO and bf16 optimizers skip an update whose gradient norm is not finite (and
        # say so here); at stage 0 in fp32 the clipping hook below does.
        return float(norm) if norm is not None else float("nan"), self.engine.was_step_applied()

    def _clip_reduced_gradients(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        # Runs inside engine.step() after DeepSpeed's all-reduce: the gradients are the global ones,
        # so every rank sees the same norm and makes the same choice.
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        self._hook_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        # `overflow` is what DeepSpeed's engine reads after the optimizer's step to count it as
        # skipped (no scheduler step either), as its own optimizers set it; without gradients
        # AdamW leaves every parameter and its state as they were.
        optimizer.overflow = not math.isfinite(self._hook_grad_norm)
        if optimizer.overflow:
            for param in params:
                param.grad = None

    def discard_gradients(self) -> None:
        """Drop what backward() accumulated since the last step(), so that the next update starts
        clean. Stage 0 accumulates in .grad; ZeRO keeps each backward's reduced gradients in
        per-group buffers that only step() consumes, and DeepSpeed has no public call to drop them:
        this clears what its own overflow branch of step() clears, plus the unmanaged-mode
        accumulators (the skip test checks every stage)."""
        from deepspeed.runtime.zero.stage_1_and_2 import INITIAL_MICRO_STEP_ID

        optimizer = self.engine.optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.engine.zero_optimization_stage() == 3:
            optimizer.averaged_gradients = {}
        elif self.engine.zero_optimization_stage() in (1, 2):
            optimizer._release_preflattened_grad_buffers()
            for buffers in (optimizer.averaged_gradients, optimizer.all_grad_tensors):
                for group in list(buffers):
                    buffers[group] = None
            optimizer.micro_step_id = INITIAL_MICRO_STEP_ID  # the next backward copies instead of adding

    def backward_padding(self) -> None:
        """A backward of zero gradient through every parameter. Under ZeRO-2 each backward is a
        collective (gradients are reduce-scattered per backward), so a rank with fewer
        micro-batches than the others calls this to keep the collectives matched."""
        ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        logits = self.engine(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        self.engine.backward(logits.float().sum() * 0.0, scale_wrt_gas=False)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Full (gathered) CPU weights with HF names, for the rollout engines: compact copies (under
        ZeRO the parameters are views of one flat buffer, and serialising a view sends the buffer)."""
        import deepspeed

        # remove_duplicate=False keeps tied weights under every name (lm_head.weight too): vLLM's
        # in-place reload restores any layer it receives no weights for, leaving a stale LM head.
        params = list(self.engine.module.named_parameters(remove_duplicate=False))
        with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=self.engine.zero_optimization_stage() == 3):
            return {name: p.detach().to("cpu", torch.float32).clone() for name, p in params}

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        """Model, optimizer, LR scheduler and step under `directory/tag`; `latest` names it.
        Collective: every rank calls it (each writes its own ZeRO partition)."""
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state)

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        """Restore the checkpoint that `directory/latest` names; returns its client state."""
        if not (directory / "latest").is_file():
            raise CheckpointNotFoundError(f"no DeepSpeed checkpoint under {directory} (no 'latest' file)")
        path, client_state = self.engine.load_checkpoint(str(directory))
        if path is None:
            raise CheckpointNotFoundError(f"DeepSpeed could not load the checkpoint under {directory}")
        return client_state

    def export_hf(self, directory: Path, tokenizer_path: str) -> None:
        """A folder that vLLM and transformers load directly (safetensors + tokenizer)."""
        from transformers import AutoTokenizer

        weights = self.named_weights()
        self.engine.module.save_pretrained(str(directory), state_dict=weights, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(str(directory))
