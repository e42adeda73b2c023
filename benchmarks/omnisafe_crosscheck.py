"""Our inner solvers vs OmniSafe's on the same task, side by side on this machine.

    .venv/bin/python benchmarks/omnisafe_crosscheck.py --family point-goal --epochs 50 \
        --steps-per-epoch 20000 --envs 4 --seeds 0 1 2 [--algos cpo trpolag crpo]

Pairs: ours ``cpo`` / ``trpolag`` / ``crpo`` vs OmniSafe's ``CPO`` / ``TRPOLag`` / ``OnCRPO``, on ONE fixed
task of a built-in family (the task `safemeta.omnisafe_env` builds for ``SafeMeta-<family>-v0`` from
``--task-seed``), with the same policy/critic sizes (64, 64, tanh: both defaults), env steps per epoch,
epochs, cost limit (the family's d) and seeds. Ours runs as a single policy trained by the inner solver
on that task (preset ``pretrained``, one task per iteration, the task pinned by setting every split range
of the family to the task's value), one meta-iteration per epoch. Reported: the last epoch's mean episode
return and cost (mean and spread over seeds) and wall time per run, with the ratio ours / OmniSafe.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

PAIRS = {"cpo": "CPO", "trpolag": "TRPOLag", "crpo": "OnCRPO"}


def run_omnisafe(algo: str, env_id: str, seed: int, args, d: float) -> tuple[float, float, float]:
    from safemeta.compat.safety_gym import import_omnisafe

    omnisafe = import_omnisafe()
    cfgs = {"seed": seed,
            "train_cfgs": {"total_steps": args.epochs * args.steps_per_epoch, "vector_env_nums": args.envs,
                           "torch_threads": 1},
            "algo_cfgs": {"steps_per_epoch": args.steps_per_epoch},
            "logger_cfgs": {"log_dir": str(Path(args.out) / "omnisafe"), "use_wandb": False,
                            "use_tensorboard": False, "save_model_freq": 10**6}}
    if algo == "TRPOLag":
        cfgs["lagrange_cfgs"] = {"cost_limit": d}
    else:
        cfgs["algo_cfgs"]["cost_limit"] = d
    start = time.perf_counter()
    ep_ret, ep_cost, _ = omnisafe.Agent(algo, env_id, custom_cfgs=cfgs).learn()
    return float(ep_ret), float(ep_cost), time.perf_counter() - start


def run_ours(inner: str, family: str, task, seed: int, args) -> tuple[float, float, float]:
    import safemeta
    from safemeta.task import split_ranges
    from safemeta.trainer import MetaTrainer

    fam_cls = safemeta.registry.env.get(family)
    pinned = {k: [task.params[k], task.params[k]] for k in split_ranges(fam_cls.Config(), "train")}
    horizon = fam_cls(fam_cls.Config()).horizon
    cfg = safemeta.resolve_config([("crosscheck", {
        "algo": "pretrained", "inner": inner, "env": family, "seed": seed,
        "env_cfg": {family: {"train": pinned}},
        "policy": {"hidden_sizes": [64, 64]}, "critic": {"hidden_sizes": [64, 64]},
        "trainer": {"iters": args.epochs, "tasks_per_iter": 1, "envs_per_task": args.steps_per_epoch // horizon,
                    "episodes_per_env": 1, "num_threads": 1}})])
    trainer = MetaTrainer(cfg)
    start = time.perf_counter()
    for _ in range(args.epochs):
        row = trainer.train_iteration()
    return row["train/return_0"], row["train/cost_0"], time.perf_counter() - start


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} +- {statistics.pstdev(xs):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="point-goal")
    p.add_argument("--task-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps-per-epoch", type=int, default=20_000)
    p.add_argument("--envs", type=int, default=4, help="OmniSafe's vector_env_nums")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algos", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--out", default="runs/crosscheck")
    args = p.parse_args()
    torch.set_num_threads(1)
    from safemeta.omnisafe_env import build_family, cost_limit_of, env_id_of, register_safemeta_envs

    env_id = env_id_of(args.family)
    register_safemeta_envs(task_seed=args.task_seed)
    d = cost_limit_of(env_id)
    family = build_family(env_id)
    task = family.sample(1, "train", np.random.default_rng(args.task_seed))[0]
    print(f"{args.family} task {task.params}, cost limit {d}, {args.epochs} epochs x {args.steps_per_epoch} steps, "
          f"seeds {args.seeds}", flush=True)
    rows = []
    for ours in args.algos:
        theirs = PAIRS[ours]
        res = {"ours": [], "omnisafe": []}
        for seed in args.seeds:
            res["ours"].append(run_ours(ours, args.family, task, seed, args))
            res["omnisafe"].append(run_omnisafe(theirs, env_id, seed, args, d))
            print(ours, seed, res["ours"][-1], theirs, res["omnisafe"][-1], flush=True)
        wall = {k: statistics.mean(r[2] for r in v) for k, v in res.items()}
        rows.append(f"| {ours} / {theirs} | {spread([r[0] for r in res['ours']])} | "
                    f"{spread([r[0] for r in res['omnisafe']])} | {spread([r[1] for r in res['ours']])} | "
                    f"{spread([r[1] for r in res['omnisafe']])} | {wall['ours']:.0f} | {wall['omnisafe']:.0f} | "
                    f"{wall['ours'] / wall['omnisafe']:.2f} |")
    print()
    print(f"{args.family} (task seed {args.task_seed}), d = {d}, {args.epochs} epochs x {args.steps_per_epoch} "
          f"env steps, seeds {args.seeds}; last-epoch episode return / cost, mean +- std over seeds")
    print("| ours / OmniSafe | return (ours) | return (OmniSafe) | cost (ours) | cost (OmniSafe) | "
          "s/run (ours) | s/run (OmniSafe) | wall ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
