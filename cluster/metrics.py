"""Where a run's numbers go: metrics.jsonl (one object per learner step), TensorBoard, and the plot."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends to the run's metrics.jsonl and TensorBoard events. `rewind(step)` (resuming, or
    recovering from a restored checkpoint) drops every record after `step` from both, so that each
    step appears once in the run's history."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.records = read_metrics(self.path) if self.path.is_file() else []
        self._write_all()  # without a line cut short by a kill, which the next record would run into
        self._open(purge_step=None)

    def _open(self, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._file = self.path.open("a")
        self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def rewind(self, step: int) -> None:
        self.close()
        self.records = [r for r in self.records if r["step"] <= step]
        self._write_all()
        self._open(purge_step=step + 1)  # TensorBoard hides the events of later steps from earlier files

    def write(self, record: dict) -> None:
        """Append `record`; one for the step of the last record (a resumed run's first evaluation, at
        the restored step) is merged into it, so that every step stays one line."""
        if self.records and self.records[-1]["step"] == record["step"]:
            self.records[-1] = self.records[-1] | record
            self._file.close()
            self._write_all()
            self._file = self.path.open("a")
        else:
            self.records.append(record)
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                self._tensorboard.add_scalar(_tensorboard_tag(key), value, record["step"])

    def _write_all(self) -> None:
        """Rewrite the file from `records`, atomically: a kill midway leaves the old file whole."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        temporary.replace(self.path)

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()


def _tensorboard_tag(key: str) -> str:
    """Namespace the flat keys for TensorBoard's grouping (CleanRL style: `losses/...`)."""
    if key.startswith("eval_"):
        return f"eval/{key}"
    if key in ("loss", "entropy", "kl", "grad_norm") or key.startswith(("clip_", "c_", "rho", "tis_", "pos_", "neg_")):
        return f"losses/{key}"
    return f"charts/{key}"


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A last line that is not JSON was cut short (the run was killed
    while writing it, or is writing it now): it is left out, with a warning."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        last = [json.loads(lines[-1])] if lines else []
    except json.JSONDecodeError:
        log.warning("%s: left out its last line, cut short: %.80s", path, lines[-1])
        last = []
    return [json.loads(line) for line in lines[:-1]] + last


NOT_PLOTTED = ("eval_return", "eval_failed", "eval_tool_calls", "eval_chips")  # on other scales, or bookkeeping


def eval_measures(records: list[dict]) -> list[str]:
    """The sampled-evaluation keys in the records (eval_accuracy, eval_tool_call_rate, ...)."""
    keys = {k for r in records for k in r if k.startswith("eval_") and isinstance(r[k], float)}
    return sorted(k for k in keys if not k.endswith("_greedy") and k not in NOT_PLOTTED and not k.startswith("eval_policy_version"))


def plot_rewards(records: list[dict], path: Path, title: str) -> None:
    """reward.png: training reward and each held-out measure (sampled solid, greedy dashed) against wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    train = [r for r in records if "reward_mean" in r]
    ax.plot([r["wall_s"] for r in train], [r["reward_mean"] for r in train], label="train reward (batch mean)",
            alpha=0.5, color="gray")
    for index, key in enumerate(eval_measures(records)):
        color = f"C{index}"
        name = key[len("eval_"):].replace("_", " ")
        for variant, style, label in ((key, "-", f"held-out {name}, T=1"), (f"{key}_greedy", "--", f"held-out {name}, greedy")):
            points = [r for r in records if variant in r]
            if points:
                ax.plot([r["wall_s"] for r in points], [r[variant] for r in points], style, marker="o", color=color,
                        label=label)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("reward / rate")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
