"""Our inner solvers vs OmniSafe's on the same task, side by side on this machine.

    .venv/bin/python benchmarks/omnisafe_crosscheck.py --family point-goal --epochs 50 \
        --steps-per-epoch 20000 --envs 4 --seeds 0 1 2 [--algos cpo trpolag crpo]

    .venv/bin/python benchmarks/omnisafe_crosscheck.py --family sg-env --env-id SafetyPointGoal1-v0 ...

Pairs: ours ``cpo`` / ``trpolag`` / ``crpo`` vs OmniSafe's ``CPO`` / ``TRPOLag`` / ``OnCRPO``, and the PPO-based
``ppolag`` / ``pidlag`` / ``p3o`` / ``focops`` vs ``PPOLag`` / ``CPPOPID`` / ``P3O`` / ``FOCOPS``, on a stock
Safety-Gymnasium id (``--family sg-env``: OmniSafe makes the id, ours wraps the same id as the one-task
family `safemeta.envs.safety_gym_plain`), or on ONE fixed task of a built-in family (the task `safemeta.compat.omnisafe_env` builds for ``SafeMeta-<family>-v0`` from
``--task-seed``), with the same policy/critic sizes (64, 64, tanh: both defaults), env steps per epoch,
epochs, cost limit (the family's d) and seeds. Ours runs as a single policy trained by the inner solver
on that task (preset ``pretrained``, one task per iteration, the task pinned by setting every split range
of the family to the task's value), one meta-iteration per epoch. Reported: the mean episode return and
cost of the last 50 episodes of training (OmniSafe's own statistic: its logger's window; ours is computed
over the same window), mean and spread over seeds, and wall time per run with the ratio ours / OmniSafe.
Every finished run is saved under ``--out``/results/<setup>/ and read back instead of rerun.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

PAIRS = {"cpo": "CPO", "trpolag": "TRPOLag", "crpo": "OnCRPO", "trpo": "TRPO",  # trpo: the unconstrained control
         "ppolag": "PPOLag", "pidlag": "CPPOPID", "p3o": "P3O", "focops": "FOCOPS"}  # the PPO-based zoo (issue 22)
DEFAULT_ALGOS = ["cpo", "trpolag", "crpo"]
# OmniSafe reads d from lagrange_cfgs for its Lagrangian methods, from algo_cfgs for the others (configs/on-policy)
LAGRANGE_KEYED = {"TRPOLag", "PPOLag", "CPPOPID", "FOCOPS"}
# OmniSafe's Agent.learn() returns the mean of the last 50 episodes (its logger's window for Metrics/EpRet and
# EpCost); ours is reported over the same window so that the two columns are the same statistic.
OMNISAFE_WINDOW = 50


def run_omnisafe(algo: str, env_id: str, seed: int, args, d: float) -> tuple[float, float, float]:
    from safemeta.compat.safety_gym import import_omnisafe
    from safemeta.config.loader import parse_set

    omnisafe = import_omnisafe()
    cfgs = {"seed": seed,
            "train_cfgs": {"total_steps": args.epochs * args.steps_per_epoch, "vector_env_nums": args.envs,
                           "torch_threads": 1},
            "algo_cfgs": {"steps_per_epoch": args.steps_per_epoch},
            "logger_cfgs": {"log_dir": str(Path(args.out) / "omnisafe"), "use_wandb": False,
                            "use_tensorboard": False, "save_model_freq": 10**6}}
    if algo in LAGRANGE_KEYED:
        cfgs["lagrange_cfgs"] = {"cost_limit": d}
    elif algo != "TRPO":
        cfgs["algo_cfgs"]["cost_limit"] = d
    for key, value in parse_set(args.omnisafe_set).items():  # e.g. algo_cfgs.obs_normalize=false
        cfgs[key] = {**cfgs.get(key, {}), **value} if isinstance(value, dict) else value
    start = time.perf_counter()
    ep_ret, ep_cost, _ = omnisafe.Agent(algo, env_id, custom_cfgs=cfgs).learn()
    return float(ep_ret), float(ep_cost), time.perf_counter() - start


def run_ours(inner: str, family: str, task, seed: int, args) -> tuple[float, float, float]:
    import safemeta
    from safemeta.config.loader import parse_set
    from safemeta.rollout.task import split_ranges
    from safemeta.training.trainer import MetaTrainer

    fam_cls = safemeta.registry.env.get(family)
    if family == "sg-env":  # a stock Safety-Gymnasium id: one task already
        env_cfg = {family: {"env_id": task.params["env_id"]}}
    else:
        env_cfg = {family: {"train": {k: [task.params[k], task.params[k]]
                                      for k in split_ranges(fam_cls.Config(), "train")}}}
    horizon = fam_cls(fam_cls.Config()).horizon
    cfg = safemeta.resolve_config([("crosscheck", {
        "algo": "pretrained", "inner": inner, "env": family, "seed": seed,
        "env_cfg": env_cfg,
        "policy": {"hidden_sizes": [64, 64]}, "critic": {"hidden_sizes": [64, 64]},
        "trainer": {"iters": args.epochs, "tasks_per_iter": 1, "envs_per_task": args.steps_per_epoch // horizon,
                    "episodes_per_env": 1, "num_threads": 1}}), ("--set", parse_set(args.set))])
    trainer = MetaTrainer(cfg)
    start = time.perf_counter()
    history = []
    for _ in range(args.epochs):
        row = trainer.train_iteration()
        history.append((row["train/return_0"], row["train/cost_0"], args.steps_per_epoch // horizon))
    ret, cost = last_episodes(history, OMNISAFE_WINDOW)
    return ret, cost, time.perf_counter() - start


def last_episodes(history: list[tuple[float, float, int]], window: int) -> tuple[float, float]:
    """Mean return and cost of the last ``window`` episodes from per-epoch (mean return, mean cost, episodes)."""
    total, ret, cost = 0, 0.0, 0.0
    for r, c, n in reversed(history):
        take = min(n, window - total)
        ret, cost, total = ret + take * r, cost + take * c, total + take
        if total >= window:
            break
    return ret / total, cost / total


def cached(path: Path, run: bool, fn) -> tuple[float, float, float]:
    """(return, cost, seconds) of one run: read from ``path`` if it was saved, else computed (when ``run``)."""
    if path.exists():
        return tuple(json.loads(path.read_text()))
    if not run:
        return (float("nan"),) * 3
    out = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(out)))
    return out


def spread(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]  # a side not run (--only) is NaN
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.2f} +- {statistics.pstdev(xs):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="point-goal",
                   help="a built-in family (OmniSafe runs it as SafeMeta-<family>-v0), or sg-env with --env-id")
    p.add_argument("--env-id", default="SafetyPointGoal1-v0", help="the Safety-Gymnasium id when --family sg-env")
    p.add_argument("--task-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps-per-epoch", type=int, default=20_000)
    p.add_argument("--envs", type=int, default=4, help="OmniSafe's vector_env_nums")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algos", nargs="+", default=DEFAULT_ALGOS, choices=list(PAIRS))
    p.add_argument("--out", default="runs/crosscheck")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of our side's config (as `safemeta train --set`), for the investigation")
    p.add_argument("--omnisafe-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of OmniSafe's custom_cfgs (e.g. algo_cfgs.obs_normalize=false), for the investigation")
    p.add_argument("--only", choices=["ours", "omnisafe"], help="run one side only")
    args = p.parse_args()
    torch.set_num_threads(1)
    from safemeta.compat.omnisafe_env import build_family, cost_limit_of, env_id_of, register_safemeta_envs

    if args.family == "sg-env":  # OmniSafe runs the stock id; ours its `sg-env` family around the same id
        from safemeta.envs.safety_gym_plain import SGEnv

        env_id = args.env_id
        family = SGEnv(SGEnv.Config(env_id=env_id))
        d = family.cost_limit
    else:
        env_id = env_id_of(args.family)
        register_safemeta_envs(task_seed=args.task_seed)
        d = cost_limit_of(env_id)
        family = build_family(env_id)
    task = family.sample(1, "train", np.random.default_rng(args.task_seed))[0]
    print(f"{args.family} task {task.params}, cost limit {d}, {args.epochs} epochs x {args.steps_per_epoch} steps, "
          f"seeds {args.seeds}", flush=True)
    setup = f"{env_id}-t{args.task_seed}-e{args.epochs}x{args.steps_per_epoch}-v{args.envs}"
    store = Path(args.out) / "results" / setup
    ours_store = store / ("ours-" + "-".join(sorted(args.set)).replace("/", "_") if args.set else "")
    omni_store = store / ("omnisafe-" + "-".join(sorted(args.omnisafe_set)) if args.omnisafe_set else "")
    print(f"results: {store} (a finished run is read back, not rerun)", flush=True)
    rows = []
    for ours in args.algos:
        theirs = PAIRS[ours]
        res = {"ours": [], "omnisafe": []}
        for seed in args.seeds:
            res["ours"].append(cached(ours_store / f"ours-{ours}-s{seed}-w{OMNISAFE_WINDOW}.json", args.only != "omnisafe",
                                      lambda: run_ours(ours, args.family, task, seed, args)))
            res["omnisafe"].append(cached(omni_store / f"omnisafe-{theirs}-s{seed}.json", args.only != "ours",
                                          lambda: run_omnisafe(theirs, env_id, seed, args, d)))
            print(ours, seed, res["ours"][-1], theirs, res["omnisafe"][-1], flush=True)
        wall = {k: statistics.mean(r[2] for r in v) if all(r[2] == r[2] for r in v) else float("nan")
                for k, v in res.items()}
        rows.append(f"| {ours} / {theirs} | {spread([r[0] for r in res['ours']])} | "
                    f"{spread([r[0] for r in res['omnisafe']])} | {spread([r[1] for r in res['ours']])} | "
                    f"{spread([r[1] for r in res['omnisafe']])} | {wall['ours']:.0f} | {wall['omnisafe']:.0f} | "
                    f"{wall['ours'] / wall['omnisafe']:.2f} |".replace("nan", "-"))
    print()
    where = args.env_id if args.family == "sg-env" else f"{args.family} (task seed {args.task_seed})"
    print(f"{where}, d = {d}, {args.epochs} epochs x {args.steps_per_epoch} "
          f"env steps, seeds {args.seeds}; mean episode return / cost of the last {OMNISAFE_WINDOW} training episodes, "
          "mean +- std over seeds")
    print("| ours / OmniSafe | return (ours) | return (OmniSafe) | cost (ours) | cost (OmniSafe) | "
          "s/run (ours) | s/run (OmniSafe) | wall ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
