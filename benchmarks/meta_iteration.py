"""Wall time of one meta-iteration (sample tasks, adapt, outer update) per preset and family.

    .venv/bin/python benchmarks/meta_iteration.py [--families point-circle ...] [--algos fomaml_trpo pretrained] [--iters 5]

Uses each family's overlay (configs/envs/<family>.yaml) and the trainer exactly as `safemeta train`
runs it, without meta-tests or checkpoints; the first iteration is a warm-up and not counted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import safemeta
from safemeta.training.trainer import MetaTrainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=["point-circle", "car-circle-hazard", "point-button",
                                                      "point-goal", "nav2d-hazard"])
    p.add_argument("--algos", nargs="+", default=["fomaml_trpo", "pretrained"])
    p.add_argument("--iters", type=int, default=4)
    args = p.parse_args()
    print("| algo | family | inner | tasks x envs x episodes | env steps / iter | s / iter (median) |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        for algo in args.algos:
            cfg = safemeta.resolve_config([("benchmark", {"algo": algo, "env": family})])
            trainer = MetaTrainer(cfg)
            trainer.train_iteration()
            times = []
            steps0 = trainer.counters["env_steps"]
            for _ in range(args.iters):
                t0 = time.perf_counter()
                trainer.train_iteration()
                times.append(time.perf_counter() - t0)
            tr = cfg.trainer
            per_iter = (trainer.counters["env_steps"] - steps0) // args.iters
            print(f"| {algo} | {family} | {cfg.inner} | {tr.tasks_per_iter} x {tr.envs_per_task} x {tr.episodes_per_env} "
                  f"| {per_iter:,} | {statistics.median(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
