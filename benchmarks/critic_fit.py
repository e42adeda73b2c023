"""How well the critics fit: explained variance of V_R and V_C under several critic settings.

    .venv/bin/python benchmarks/critic_fit.py [--algos c_maml meta_cpo] [--families point-circle point-goal] [--iters 8]

For each algo x family x setting, a run of ``--iters`` meta-iterations (the family's overlay, the preset's
settings, the critic setting on top); reported: the explained variance 1 - Var(target - V) / Var(target) of
the fitted critics on the batch they were fitted to, averaged over the last 3 iterations, for the
adaptation's per-task fits (``critic/ev_*``) and for the carried initialization fitted on the meta-policy's
rollouts (``critic/meta_ev_*``), and seconds per meta-iteration. Settings: ``old`` is the fitting before
issue 16 (10 full-batch Adam steps), ``default`` the current defaults, the others vary the step caps
(``critic.max_minibatches`` per task's fit, ``critic.meta_max_minibatches`` for the initialization's).
"""
from __future__ import annotations

import argparse
import time

import safemeta
from safemeta.training.trainer import MetaTrainer

SETTINGS = {
    "old (10 full-batch steps)": {"epochs": 10, "minibatch_size": 0, "max_minibatches": 0},
    "default (10 epochs x 256, <= 40 steps per task, <= 200 for the initialization)": {},
    "<= 80 steps": {"max_minibatches": 80, "meta_max_minibatches": 80},
    "<= 40 steps": {"max_minibatches": 40, "meta_max_minibatches": 40},
    "<= 20 steps": {"max_minibatches": 20, "meta_max_minibatches": 20},
    "<= 24 steps per task, <= 200 for the initialization": {"max_minibatches": 24, "meta_max_minibatches": 200},
    "<= 10 steps per task, <= 50 for the initialization": {"max_minibatches": 10, "meta_max_minibatches": 50},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["c_maml", "meta_cpo"])
    p.add_argument("--families", nargs="+", default=["point-circle", "point-goal"])
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()
    print("| algo | family | critic fitting | EV V_R | EV V_C | meta EV V_R | meta EV V_C | s / iter |")
    print("|---|---|---|---|---|---|---|---|")
    for family in args.families:
        for algo in args.algos:
            for name in args.settings:
                cfg = safemeta.resolve_config([("benchmark", {"algo": algo, "env": family, "critic": SETTINGS[name],
                                                              "log": {"progress": False}})])
                trainer = MetaTrainer(cfg)
                t0 = time.perf_counter()
                last = [trainer.train_iteration() for _ in range(args.iters)][-3:]
                per_iter = (time.perf_counter() - t0) / args.iters
                mean = lambda key: sum(m[key] for m in last) / len(last)  # noqa: E731
                print(f"| {algo} | {family} | {name} | {mean('critic/ev_reward'):.2f} | {mean('critic/ev_cost'):.2f} | "
                      f"{mean('critic/meta_ev_reward'):.2f} | {mean('critic/meta_ev_cost'):.2f} | {per_iter:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
