"""The GPU check, for a session that is lent a GPU machine (the `device` tool; CI never runs it).

1. The learner's own DeepSpeed step (learner.engine.PolicyEngine + learner.step.train_step, bf16,
   ZeRO stage 2) on CUDA for a Llama of at least 100M parameters, against a plain PyTorch loop
   (AdamW, bf16 autocast) with the same loss on the same model and batch: tokens/s of each,
   alternated step by step, medians.
2. The collective backend's buckets on CUDA tensors: plan / pack / unpack round trip of the model's
   weights (exact), pack bandwidth, and the NCCL broadcast of every bucket in a process group of
   one rank (one GPU cannot host two NCCL ranks; the two-rank logic is tested with gloo on CPU).

The machine has torch and transformers but no Ray, vLLM or DeepSpeed and no package index: carry
the wheels of deepspeed, redis, msgpack, hiredis and their pure-python dependencies (the device
tool's README says how), then run from the repository root:

    python -m bench.gpu_check            # prints one JSON line per check and a summary
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

PARAMS = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "head_dim": 64, "intermediate_size": 3072,
          "vocab_size": 32000}  # ~134M parameters with untied embeddings
BATCH, LENGTH, ROUNDS = 16, 512, 10


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=PARAMS["vocab_size"], hidden_size=PARAMS["hidden_size"],
                         num_hidden_layers=PARAMS["num_layers"], num_attention_heads=PARAMS["num_heads"],
                         num_key_value_heads=PARAMS["num_heads"], head_dim=PARAMS["head_dim"],
                         intermediate_size=PARAMS["intermediate_size"], max_position_embeddings=LENGTH)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _batch():
    from learner.batch import TrainBatch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, PARAMS["vocab_size"], (BATCH, LENGTH), generator=g)
    mask = torch.ones(BATCH, LENGTH - 1)
    mask[:, : LENGTH // 4] = 0  # the prompt
    advantages = torch.randn(BATCH, 1, generator=g) * mask
    return TrainBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask,
                      behavior_logprobs=torch.full((BATCH, LENGTH - 1), -2.0) * mask,
                      policy_versions=torch.zeros(BATCH, LENGTH - 1, dtype=torch.int64), advantages=advantages,
                      lengths=torch.full((BATCH,), LENGTH))


def learner_vs_plain(model_dir: str) -> dict:
    from learner.config import LearnerConfig
    from learner.engine import PolicyEngine, init_process_group
    from learner.loss_config import PolicyLossConfig
    from buffer.ports import free_port
    from learner.losses import LossInputs, Normalizers, fixed_step_state, policy_loss
    from learner.step import train_step

    init_process_group(0, 1, "127.0.0.1", free_port())
    cfg = LearnerConfig(dtype="bfloat16", zero_stage=2, micro_batch_tokens=BATCH * LENGTH)
    engine = PolicyEngine(model_dir, cfg, total_steps=100, world_size=1)
    loss_cfg = PolicyLossConfig()
    batch = _batch()
    plain = _model().to("cuda")
    optimizer = torch.optim.AdamW(plain.parameters(), lr=cfg.optim.lr)
    tokens = int(batch.attention_mask.sum())

    def ours() -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        train_step(engine, batch, loss_cfg, cfg.micro_batch_tokens)
        torch.cuda.synchronize()
        return tokens / (time.perf_counter() - started)

    def baseline() -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        ids, mask = batch.input_ids.cuda(), batch.loss_mask.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = plain(input_ids=ids).logits[:, :-1].float()
        logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        inputs = LossInputs(logprobs=logprobs, behavior_logprobs=batch.behavior_logprobs.cuda(),
                            advantages=batch.advantages.cuda(), mask=mask)
        norm = Normalizers(float(mask.sum()), float(BATCH), LENGTH - 1)
        loss, _ = policy_loss(inputs, norm, fixed_step_state(loss_cfg), loss_cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        torch.cuda.synchronize()
        return tokens / (time.perf_counter() - started)

    ours(), baseline()  # warm-up: kernels, allocator
    pairs = [(ours(), baseline()) for _ in range(ROUNDS)]
    return {"check": "learner_step_bf16", "params": sum(p.numel() for p in plain.parameters()),
            "tokens_per_step": tokens, "tidal_tokens_per_s": statistics.median(o for o, _ in pairs),
            "plain_tokens_per_s": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(o / b for o, b in pairs)}


def buckets_on_cuda(model) -> dict:
    import torch.distributed as dist

    from buffer.ports import free_port
    from buffer.weight_transport import broadcast, empty_bucket, manifest, pack, plan, unpack

    weights = {name: p.detach().to("cuda", torch.bfloat16) for name, p in model.named_parameters()}
    specs = manifest(weights)
    buckets = plan(specs, 64 * 2**20)
    tensors = [weights[s.name] for s in specs]
    torch.cuda.synchronize()
    started = time.perf_counter()
    packed = [pack(tensors, bucket) for bucket in buckets]
    torch.cuda.synchronize()
    pack_s = time.perf_counter() - started
    store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
    group = dist.ProcessGroupNCCL(store, 0, 1, dist.ProcessGroupNCCL.Options())
    received = []
    for bucket, flat in zip(buckets, packed):
        into = empty_bucket(specs, bucket, "cuda")
        into.copy_(flat)
        broadcast(group, into).wait()
        received += unpack(into, specs, bucket)
    exact = all(torch.equal(weights[name], tensor) for name, tensor in received) and len(received) == len(specs)
    nbytes = sum(t.numel() * t.element_size() for t in packed)
    return {"check": "buckets_cuda_nccl", "buckets": len(buckets), "bytes": nbytes, "round_trip_exact": exact,
            "pack_gb_per_s": nbytes / pack_s / 1e9}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; this check is for the lent GPU machine")
    os.environ.setdefault("DS_ACCELERATOR", "cuda")
    with tempfile.TemporaryDirectory() as folder:
        model = _model()
        model.save_pretrained(folder, safe_serialization=True)
        results = [buckets_on_cuda(model), learner_vs_plain(folder)]
    for result in results:
        print(json.dumps(result))
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
