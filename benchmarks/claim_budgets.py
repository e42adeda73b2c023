"""What each claim costs at its budget here, and what its MuJoCo twin would cost (issue 20, items 3-5).

    .venv/bin/python benchmarks/claim_budgets.py [--claims leaderboards/claims.yaml] [--steps 2000]

For every meta-test claim of the claims file and every method row of it, from the results store's records
(the seeds present): env steps per seed of meta-training (the records' per-iteration ``env_steps``) and of the
main meta-test (K fine-tuning batches + K + 1 scorings on fresh episodes; views meta-test again and are not
counted), and the measured wall minutes per seed of meta-training here (the records' ``wall_time``, 1 torch
thread, other jobs may have shared the cores). Then the same budget on the family's Safety-Gymnasium twin
(``sg-<family>``): its env steps/s on one core measured now (random actions, one env, resets included, a
freshly drawn test task, ``--steps`` steps), and the projected wall hours = the measured minutes here + every
env step of the seed (training and main meta-test) at the twin's rate. The projection keeps the built-in
family's own compute (critic fits, solver steps) and replaces only its simulation, whose time here is a few
percent of the total; it is a lower bound where MuJoCo episodes differ in length.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

TWINS = {"car-circle-hazard": ("sg-car-circle-hazard", {}), "point-circle": ("sg-point-circle", {}),
         "point-button": ("sg-point-button", {}), "point-goal": ("sg-point-goal", {"level": 2}),
         "point-goal-level1": ("sg-point-goal", {"level": 1})}


def twin_rate(family: str, steps: int) -> float:
    """env steps/s of one env of the family's Safety-Gymnasium twin (random actions, resets included)."""
    from safemeta import registry

    name, overrides = TWINS[family]
    cls = registry.env.get(name)
    fam = cls(cls.Config(**overrides))
    venv = fam.make(fam.sample(1, "test", np.random.default_rng(0)), 1, "cpu", 0)
    venv.reset(0)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        venv.step(torch.rand(1, venv.act_dim, generator=gen) * 2 - 1)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claims", default="leaderboards/claims.yaml")
    p.add_argument("--steps", type=int, default=2000, help="twin env steps to time per family")
    args = p.parse_args()
    torch.set_num_threads(1)
    from safemeta.evaluation.claims import ONLINE_METRIC, load_claims
    from safemeta.evaluation.leaderboard import group, load_store

    store, claims = load_claims(args.claims)
    by_family = group(load_store(Path(store)))
    rates: dict[str, float] = {}
    print("| claim | method | seeds | train env steps / seed | meta-test env steps / seed | train min / seed here | "
          "twin | twin env steps/s | projected twin h / seed |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals: dict[str, tuple[float, float]] = {}
    seen = set()
    for c in claims:
        rows = (c.family, frozenset([c.subject, *c.rivals]))
        if c.metric == ONLINE_METRIC or rows in seen:
            continue  # a claim in another view reads the same runs; online claims have no twin run here
        seen.add(rows)
        methods = {m.label: m for m in by_family.get(c.family, {}).values()}
        if c.family in TWINS and c.family not in rates:
            rates[c.family] = twin_rate(c.family, args.steps)
        for label in [c.subject, *c.rivals]:
            m = methods.get(label)
            if m is None or not m.runs:
                continue
            train = float(np.mean([r.final.get("env_steps", 0) for r in m.runs]))
            rep = m.runs[0].report
            k = len(rep["steps"]) - 1
            test = rep["env_steps_per_step"] * k + rep["eval_env_steps_per_step"] * (k + 1)
            minutes = float(np.mean([r.final.get("wall_time", 0.0) for r in m.runs])) / 60
            rate = rates.get(c.family)
            hours = (minutes / 60 + (train + test) / rate / 3600) if rate else float("nan")
            here, there = totals.get(c.id, (0.0, 0.0))
            totals[c.id] = (here + minutes * c.seeds / 60, there + hours * c.seeds)
            print(f"| {c.id} | {label} | {len(m.runs)} | {train:,.0f} | {test:,.0f} | {minutes:.1f} | "
                  f"{TWINS.get(c.family, ('-',))[0]} | {rate or float('nan'):,.0f} | {hours:.1f} |")
    print("\n| claim | seeds | meta-training here, h (1 core) | projected on the twin, h (1 core) |")
    print("|---|---|---|---|")
    for cid, (here, there) in totals.items():
        seeds = next(c.seeds for c in claims if c.id == cid)
        print(f"| {cid} | {seeds} | {here:.1f} | {there:.0f} |")


if __name__ == "__main__":
    main()
