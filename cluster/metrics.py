"""Where a run's numbers go: metrics.jsonl (one object per learner step), TensorBoard, and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a")
        self._tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                self._tensorboard.add_scalar(_tensorboard_tag(key), value, record["step"])

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
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_rewards(records: list[dict], path: Path, title: str) -> None:
    """reward.png: training reward and held-out accuracy against wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    train = [r for r in records if "reward_mean" in r]
    ax.plot([r["wall_s"] for r in train], [r["reward_mean"] for r in train], label="train reward (batch mean)", alpha=0.6)
    for key, label in (("eval_accuracy", "held-out accuracy, T=1 (pass@1)"), ("eval_accuracy_greedy", "held-out accuracy, greedy")):
        points = [r for r in records if key in r]
        ax.plot([r["wall_s"] for r in points], [r[key] for r in points], marker="o", label=label)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
