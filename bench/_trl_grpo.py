"""TRL's GRPOTrainer on the demo task, run by `tidal bench trl` in TRL's own virtualenv.

Imports only torch, transformers, datasets and trl (never Tidal). Reads a JSON spec (model path,
training and held-out prompts with answers, the RL settings), trains, and evaluates held-out
pass@1 (one sample per prompt at T=1, the demo's scoring: the completion's leading integer equals
the answer) before the first step and every `eval_every` steps, writing the evaluations with the
seconds since training began to the spec's `output`.

    python -P bench/_trl_grpo.py SPEC.json    # -P: bench/trl.py must not shadow the trl package
"""

from __future__ import annotations

import json
import re
import sys
import time
import warnings

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

_LEADING_INT = re.compile(r"\s*(-?\d+)")  # the demo's correctness rule (envs/rewards.py)


def correct(completion: str, answer: str) -> float:
    match = _LEADING_INT.match(completion)
    return float(match is not None and int(match.group(1)) == int(answer))


def correctness(prompts, completions, answer, **_) -> list[float]:
    return [correct(c, a) for c, a in zip(completions, answer)]


@torch.no_grad()
def pass_at_1(model, tokenizer, prompts: list[str], answers: list[str], max_new_tokens: int) -> float:
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    was_training = model.training
    model.eval()
    out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model.train(was_training)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(correct(t, a) for t, a in zip(texts, answers)) / len(answers)


class HeldOutEval(TrainerCallback):
    def __init__(self, spec: dict, tokenizer) -> None:
        self.spec, self.tokenizer, self.records, self.started = spec, tokenizer, [], None

    def _evaluate(self, model, step: int) -> None:
        accuracy = pass_at_1(model, self.tokenizer, self.spec["eval_prompts"], self.spec["eval_answers"],
                             self.spec["max_new_tokens"])
        self.records.append({"step": step, "wall_s": time.time() - self.started, "eval_accuracy": accuracy})
        print(f"trl: step {step}: held-out pass@1 {accuracy:.3f}", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, model=None, **_):
        self.started = time.time()
        self._evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **_):
        if state.global_step % self.spec["eval_every"] == 0:
            self._evaluate(model, state.global_step)


def main(spec_path: str) -> int:
    warnings.filterwarnings("ignore")  # keep the bench's terminal readable; results go to the JSON
    spec = json.loads(open(spec_path).read())
    process_started = time.time()
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["torch_threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    train = Dataset.from_dict({"prompt": spec["train_prompts"], "answer": spec["train_answers"]})
    config = GRPOConfig(
        output_dir=spec["output_dir"], max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999,
        per_device_train_batch_size=spec["prompts_per_step"] * spec["group_size"],
        num_generations=spec["group_size"], gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        epsilon=spec["eps_low"], epsilon_high=spec["eps_high"], loss_type="dapo", beta=0.0, scale_rewards="group",
        use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=10 ** 9,
        seed=spec["seed"], dataloader_num_workers=0, disable_tqdm=True,
    )
    evaluation = HeldOutEval(spec, tokenizer)
    trainer = GRPOTrainer(model=model, reward_funcs=correctness, args=config, train_dataset=train,
                          processing_class=tokenizer, callbacks=[evaluation])
    trainer.train()
    result = {"evals": evaluation.records, "startup_s": evaluation.started - process_started,
              "train_s": time.time() - evaluation.started, "trl_version": __import__("trl").__version__}
    open(spec["output"], "w").write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
