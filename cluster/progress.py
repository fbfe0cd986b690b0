"""Live progress of a run on the terminal: a bar with the latest step's numbers, and a line per eval."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


HEADLINE = ("accuracy", "tool_call_rate", "win_rate", "win_rate_heuristic", "illegal_move_rate", "exploitability")
"""The measures the terminal shows for an evaluation, when present (metrics.jsonl has them all)."""


class Progress:
    def __init__(self, total_steps: int) -> None:
        self.console = Console()
        self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), console=self.console, transient=False)
        self._task = self._bar.add_task("starting", total=total_steps)
        self._eval = "eval -"

    def __enter__(self) -> "Progress":
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def note(self, message: str) -> None:
        """A timestamped line, never wrapped: paths and commands in it stay whole for copying."""
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", soft_wrap=True, highlight=False)

    def evaluated(self, version: int, record: dict) -> None:
        """One line per evaluation, named by the policy version it measured: the headline measures,
        sampled (T=1) / greedy where both exist."""
        names = [k[len("eval_"):] for k in record if k.startswith("eval_") and not k.endswith("_greedy")]
        shown = [n for n in HEADLINE if n in names] or [n for n in names if n not in ("return", "failed", "policy_version")]

        def value(name: str) -> str:
            greedy = record.get(f"eval_{name}_greedy")
            return f"{record[f'eval_{name}']:.3f}" + (f" / {greedy:.3f}" if greedy is not None else "")

        self._eval = "eval " + " ".join(value(n).replace(" ", "") for n in shown[:2])
        kinds = "sampled / greedy" if any(f"eval_{n}_greedy" in record for n in shown) else "sampled"
        self.note(f"version {version}: held-out ({kinds}) " + ", ".join(f"{n} {value(n)}" for n in shown))

    def stepped(self, record: dict) -> None:
        text = (f"reward {record.get('reward_mean', float('nan')):.2f}  {self._eval}  "
                f"loss {record.get('loss', float('nan')):+.3f}  ent {record.get('entropy', float('nan')):.2f}  "
                f"clip {record.get('clip_frac_low', 0) + record.get('clip_frac_high', 0):.2f}  "
                f"c_high {record.get('c_high', float('nan')):.2f}  "
                f"stale {record.get('staleness_mean', 0):.1f}  "
                f"rollout {record.get('rollout_tokens_per_s', 0):.0f} tok/s  "
                f"learner {record.get('learner_tokens_per_s', 0):.0f} tok/s")
        self._bar.update(self._task, completed=record["step"], description=text)
