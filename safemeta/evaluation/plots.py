"""Leaderboard plots (matplotlib, Agg): adaptation curves and meta-training curves per family."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from safemeta import registry  # noqa: E402
from safemeta.evaluation.stats import bootstrap  # noqa: E402


def plot_adaptation(family: str, methods: list, limit: float, path: Path, title: str = "") -> Path:
    """Return and cost vs fine-tuning step on held-out tasks, one line per method, 95% bootstrap bands; with
    reports that record it, a third panel: the cumulative cost paid by the fine-tuning batches themselves."""
    paid = all("cost_paid" in r.report["steps"][0]["per_task"] for m in methods for r in m.runs)
    fig, axes = plt.subplots(1, 3 if paid else 2, figsize=(15 if paid else 10, 4))
    keys = ("return", "cost", "cost_paid")[:len(axes)]
    for m in methods:
        steps = range(len(m.runs[0].report["steps"]))
        for ax, key in zip(axes, keys):
            est = [bootstrap(m.per_task(k, key), reps=500) for k in steps]
            ax.plot(list(steps), [e.value for e in est], marker="o", label=m.label)
            ax.fill_between(list(steps), [e.low for e in est], [e.high for e in est], alpha=0.2)
    axes[1].axhline(limit, color="k", linestyle="--", linewidth=1, label=f"cost limit d = {limit:g}")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(fontsize=8)
    labels = ("episode return (fresh episodes)", "episode cost (fresh episodes)",
              "cost paid while fine-tuning (cumulative)")
    return _finish(fig, tuple(zip(axes, labels)), "fine-tuning step",
                   title or f"{family}: meta-test on held-out tasks", path)


def plot_training(family: str, methods: list, path: Path) -> Path:
    """Meta-policy return and cost on training tasks vs meta-iteration (mean over seeds, min-max band)."""
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(10, 4))
    for m in methods:
        curves = [[row for row in r.metrics if "train/return_0" in row] for r in m.runs]
        n = min(len(c) for c in curves)
        if n == 0:
            continue
        it = [row["iter"] for row in curves[0][:n]]
        for ax, key in ((ax_r, "train/return_0"), (ax_c, "train/cost_0")):
            y = np.array([[row[key] for row in c[:n]] for c in curves])
            ax.plot(it, y.mean(0), label=m.label)
            ax.fill_between(it, y.min(0), y.max(0), alpha=0.2)
    cfg = methods[0].runs[0].cfg
    limit = registry.env.get(cfg.env)(cfg.env_params).cost_limit_for("train")
    ax_c.axhline(limit, color="k", linestyle="--", linewidth=1, label=f"training cost limit d = {limit:g}")
    ax_c.legend(fontsize=8)
    ax_r.legend(fontsize=8)
    return _finish(fig, ((ax_r, "meta-policy return (train tasks)"), (ax_c, "meta-policy cost (train tasks)")),
                   "meta-iteration", f"{family}: meta-training", path)


def _finish(fig, labelled_axes, xlabel: str, title: str, path: Path) -> Path:
    """Axis labels, grid, title; save as PNG and close."""
    for ax, ylabel in labelled_axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
