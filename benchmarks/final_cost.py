"""Where each inner solver ends on point-circle: true J_C and return of the final policies, with and
without CPO's cost shaping (Achiam et al. 2017, Sec. 6.3; ``critic.cost_shaping_horizon``), over seeds.

The protocol of ``tests/test_inner_cpo_crpo.py::test_solver_ends_within_the_cost_limit_on_point_circle``:
per seed, 4 training tasks of point-circle, each its own policy from the same random initialization,
``--steps`` inner steps of the solver on ``--envs`` (4) envs x 1 episode per step, then two candidate outputs
(``InnerSolver.output``) on 16 fresh episodes per task: the last iterate (``output: last``) and the
latest iterate whose own batch estimated J within d (+ tolerance) (``output: feasible``, CRPO's
Algorithm 1 rule), with the true cost (never the shaped one), next to the initial (random) policy.

    .venv/bin/python benchmarks/final_cost.py --solvers cpo crpo trpolag --horizons 0 10 --seeds 0 1 2

Results are cached per (solver, H, seed, steps, envs) in ``runs/final_cost/`` so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import safemeta
from safemeta.evaluation.meta_test import solver_endpoint
from safemeta.training.trainer import MetaTrainer

TASKS, EVAL_ENVS = 4, 16


def final_policies(inner: str, horizon: int, seed: int, steps: int, envs: int) -> dict:
    """One seed of the protocol (``safemeta.evaluation.meta_test.solver_endpoint``) with shaping horizon H."""
    layer = {"env": "point-circle", "inner": inner, "algo": "pretrained", "seed": seed,
             "trainer": {"episodes_per_env": 1}, "critic": {"cost_shaping_horizon": horizon}}
    trainer = MetaTrainer(safemeta.resolve_config([("final_cost", layer)]))
    return solver_endpoint(trainer, TASKS, steps, envs, EVAL_ENVS, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--solvers", nargs="+", default=["cpo", "crpo", "trpolag"])
    ap.add_argument("--horizons", nargs="+", type=int, default=[0, 10])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--envs", type=int, default=4, help="envs (= episodes) per task and step")
    ap.add_argument("--out", default="runs/final_cost")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for solver in args.solvers:
        for h in args.horizons:
            per_seed = []
            for seed in args.seeds:
                path = cache / f"{solver}-H{h}-s{seed}-k{args.steps}-e{args.envs}.json"
                if not path.exists():
                    start = time.time()
                    res = final_policies(solver, h, seed, args.steps, args.envs)
                    res["seconds"] = time.time() - start
                    path.write_text(json.dumps(res, indent=1))
                per_seed.append(json.loads(path.read_text()))
            rows.append((solver, h, per_seed))
    print(f"point-circle, d = {rows[0][2][0]['cost_limit']:g}; {args.steps} steps of {args.envs} episodes per task; "
          f"mean over {TASKS} tasks per seed; seeds {' '.join(map(str, args.seeds))}\n")
    print("| solver | H | output | J_C per seed | worst task J_C | return per seed | seeds with J_C <= d |")
    print("|---|---|---|---|---|---|---|")
    for solver, h, per_seed in rows:
        d = per_seed[0]["cost_limit"]
        for which in ("last", "feasible"):
            cost = [statistics.mean(r[which]["cost"]) for r in per_seed]
            ret = [statistics.mean(r[which]["return"]) for r in per_seed]
            worst = max(max(r[which]["cost"]) for r in per_seed)
            ok = sum(c <= d for c in cost)
            print(f"| {solver} | {h} | {which} | {' / '.join(f'{c:.1f}' for c in cost)} | {worst:.1f} | "
                  f"{' / '.join(f'{r:.1f}' for r in ret)} | {ok} of {len(cost)} |")
    init = [statistics.mean(r["initial"]["return"]) for _, _, per_seed in rows for r in per_seed]
    print(f"\nThe random initial policies: return {statistics.mean(init):.1f} (mean over all runs).")


if __name__ == "__main__":
    main()
