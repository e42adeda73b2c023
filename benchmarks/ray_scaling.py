"""Meta-iteration wall time with the Ray executor: 1 vs 2 (or more) workers, against the local executor
and the ideal (one worker's time / workers), on a Safety-Gymnasium family and on a built-in batched one.

    .venv/bin/python benchmarks/ray_scaling.py [--families sg-point-goal point-goal] [--workers 1 2] [--iters 2]
                                               [--plot benchmarks/ray_scaling.png]

Every row of a family runs the same config with ``trainer.shards`` = the largest worker count, so every
row computes the same numbers (the executor test checks they are identical) and only where they are
computed differs. The first iteration (actor start, env creation) is a warm-up and not counted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import safemeta
from safemeta.training.trainer import MetaTrainer

BUDGETS = {  # per family: small enough to time in minutes on 2 cores, large enough that rollouts dominate
    "sg-point-goal": {"tasks_per_iter": 4, "envs_per_task": 2, "episodes_per_env": 1},
    "point-goal": {"tasks_per_iter": 8, "envs_per_task": 16, "episodes_per_env": 1},
}


def time_iterations(cfg, iters: int) -> tuple[float, int]:
    trainer = MetaTrainer(cfg)
    try:
        trainer.train_iteration()
        times, steps0 = [], trainer.counters["env_steps"]
        for _ in range(iters):
            t0 = time.perf_counter()
            trainer.train_iteration()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), (trainer.counters["env_steps"] - steps0) // iters
    finally:
        trainer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(BUDGETS))
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--algo", default="fomaml_trpo")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--plot", default="benchmarks/ray_scaling.png", help="where the figure goes ('' for none)")
    args = p.parse_args()
    measured: dict[str, list[tuple[str, float]]] = {}
    shards = max(args.workers)
    print(f"machine: {os.cpu_count()} cores; algo {args.algo}; shards = {shards} in every row\n")
    print("| family | executor | workers | env steps / iter | s / iter (median) | speed-up vs 1 worker | ideal |")
    print("|---|---|---|---|---|---|---|")
    for family in args.families:
        trainer_cfg = {**BUDGETS.get(family, {}), "shards": shards, "eval_every": 0}
        make = lambda **t: safemeta.resolve_config(  # noqa: E731
            [("benchmark", {"algo": args.algo, "env": family, "log": {"progress": False},
                            "trainer": {**trainer_cfg, **t}})])
        for label, cfg in (("local, 1 shard (all tasks batched)", make(shards=1)), ("local", make())):
            s, steps = time_iterations(cfg, args.iters)
            measured.setdefault(family, []).append((label.split(",")[0] + (" (1 shard)" if "1 shard" in label else ""), s))
            print(f"| {family} | {label} | - | {steps:,} | {s:.2f} | | |", flush=True)
        one = None
        for w in args.workers:
            s, steps = time_iterations(make(executor="ray", ray_workers=w), args.iters)
            one = one or s
            measured[family].append((f"ray x{w}", s))
            if w > 1:
                measured[family].append((f"ideal x{w}", one / w))
            print(f"| {family} | ray | {w} | {steps:,} | {s:.2f} | {one / s:.2f} | {w:.2f} |", flush=True)
    if args.plot:
        plot(measured, args.plot)


def plot(measured: dict[str, list[tuple[str, float]]], path: str) -> None:
    """One panel per family: seconds per meta-iteration for each executor, the ideal hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(measured), figsize=(5.5 * len(measured), 3.8), squeeze=False)
    for ax, (family, bars) in zip(axes[0], measured.items()):
        labels, secs = zip(*bars)
        colors = ["#999999" if lb.startswith("local") else "#4c72b0" for lb in labels]
        drawn = ax.bar(range(len(bars)), secs, color=colors)
        for bar, lb in zip(drawn, labels):
            if lb.startswith("ideal"):
                bar.set_hatch("//")
                bar.set_facecolor("white")
                bar.set_edgecolor("#4c72b0")
        ax.set_xticks(range(len(bars)), labels, rotation=20, ha="right")
        ax.set_ylabel("s per meta-iteration")
        ax.set_title(family)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
