"""Meta-iteration throughput against collection alone at the same batch, with a per-phase breakdown.

    .venv/bin/python benchmarks/pipeline.py [--algos c_maml meta_cpo fomaml_trpo] [--families point-circle point-goal]
                                            [--envs preset 16] [--iters 3] [--device cpu] [--set KEY=VALUE ...]
                                            [--old REV] [--rounds 1]

For each algo x family x envs-per-task ("preset": the family's overlay; a number overrides
``trainer.envs_per_task``), in a fresh subprocess (so peak memory is that cell's):
- env-steps/s of whole meta-iterations (`MetaTrainer.train_iteration`, as `safemeta train` runs them, without
  meta-tests or checkpoints; one warm-up iteration, then the median of ``--iters``);
- env-steps/s of collection alone (`Collector.collect` of the meta-policy on the same tasks x envs, same
  episodes), and their ratio: 1.0 would mean every other part of the iteration is free;
- the iteration's wall time split by phase, each phase's own time (nested calls belong to the innermost):
  collect, critic fit (fits and GAE annotation), inner step, outer update (the meta-gradient, the meta line
  search, without the inner steps it replays), other;
- peak resident memory of the process (and peak CUDA memory on ``--device cuda``; not yet run on a GPU).

``--old REV`` also runs every cell on that commit's code (``git archive`` into a temporary directory), alternating
with this tree ``--rounds`` times, and prints each tree's best run and the speed-up: the machine is shared and
noisy, so only runs made side by side compare.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection_speed import export  # noqa: E402  (a commit's tree laid out as the editable install maps it)

PHASES = ("collect", "critic fit", "inner step", "outer update")


class PhaseTimer:
    """Exclusive wall time per phase: time inside a nested phase counts for the nested one only."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [phase, start of its current exclusive stretch]

    @contextmanager
    def phase(self, name: str):
        now = time.perf_counter()
        if self.stack:
            parent = self.stack[-1]
            self.total[parent[0]] += now - parent[1]
        self.stack.append([name, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            self.total[name] += end - self.stack.pop()[1]
            if self.stack:
                self.stack[-1][1] = end

    def wrap(self, obj, method: str, name: str) -> None:
        fn = getattr(obj, method)

        def timed(*a, **k):
            with self.phase(name):
                return fn(*a, **k)

        setattr(obj, method, timed)


def measure(algo: str, family: str, envs: str, iters: int, device: str, overrides: list[str] = ()) -> dict:
    import numpy as np
    import torch

    import safemeta
    from safemeta.config.loader import parse_set
    from safemeta.training.model import stacked_theta
    from safemeta.training.trainer import MetaTrainer

    layer: dict = {"algo": algo, "env": family, "trainer": {"device": device}, "log": {"progress": False}}
    if envs != "preset":
        layer["trainer"]["envs_per_task"] = int(envs)
    cfg = safemeta.resolve_config([("benchmark", layer), ("--set", parse_set(list(overrides)))])
    trainer = MetaTrainer(cfg)
    tr = cfg.trainer
    collect = trainer.adapter.collector.collect  # untimed, for collection alone
    timer = PhaseTimer()
    timer.wrap(trainer.adapter.collector, "collect", "collect")
    timer.wrap(trainer.critics, "fit_and_annotate", "critic fit")
    timer.wrap(trainer.inner, "step", "inner step")
    timer.wrap(trainer.outer, "update", "outer update")
    trainer.train_iteration()  # warm-up
    times, phases, steps = [], defaultdict(list), []
    for _ in range(iters):
        timer.total.clear()
        before = trainer.counters["env_steps"]
        t0 = time.perf_counter()
        trainer.train_iteration()
        times.append(time.perf_counter() - t0)
        steps.append(trainer.counters["env_steps"] - before)
        for p in PHASES:
            phases[p].append(timer.total[p])
    # collection alone: the meta-policy on the same number of tasks x envs, same episodes per rollout
    tasks = trainer.family.sample(tr.tasks_per_iter, "train", np.random.default_rng(0))
    venv = trainer.family.make(tasks, tr.envs_per_task, device, 0)
    theta = stacked_theta(trainer.meta, len(tasks))
    gen = torch.Generator().manual_seed(0)
    collect(theta, venv, tr.episodes_per_env, gen)
    ctimes, csteps = [], 0
    for _ in range(max(iters, 2)):
        t0 = time.perf_counter()
        b = collect(theta, venv, tr.episodes_per_env, gen)
        ctimes.append(time.perf_counter() - t0)
        csteps = b.env_steps
    iteration = statistics.median(times)
    out = {"algo": algo, "family": family, "inner": cfg.inner,
           "size": f"{tr.tasks_per_iter} x {tr.envs_per_task} x {tr.episodes_per_env}",
           "iter_s": iteration, "iter_sps": statistics.median(steps) / iteration,
           "collect_sps": csteps / statistics.median(ctimes),
           "phases": {p: statistics.median(v) for p, v in phases.items()},
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_cell(algo: str, family: str, envs: str, args, tree: Path | None = None) -> dict:
    """One cell in a fresh subprocess: this working tree's code, or ``tree``'s (an exported older commit)."""
    cmd = [sys.executable, __file__, "--one", algo, family, envs, "--iters", str(args.iters),
           "--device", args.device, "--set", *args.set]
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree), "SAFEMETA_TREE": str(tree)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=None if tree is None else tempfile.gettempdir())
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    """The fastest iteration of ``runs`` (with its phases), and the fastest collection of any of them: on a shared
    machine the best run is the one least disturbed by other work."""
    fastest = min(runs, key=lambda r: r["iter_s"])
    return {**fastest, "collect_sps": max(r["collect_sps"] for r in runs)}


def row(r: dict, first: str = "") -> str:
    ph = r["phases"]
    other = r["iter_s"] - sum(ph.values())
    mem = f"{r['peak_rss_mb']:.0f}" + (f" (CUDA {r['peak_cuda_mb']:.0f})" if "peak_cuda_mb" in r else "")
    return (f"| {first}{r['algo']} | {r['family']} | {r['size']} | {r['iter_s']:.2f} | {r['iter_sps']:,.0f} | "
            f"{r['collect_sps']:,.0f} | {r['iter_sps'] / r['collect_sps']:.2f} | "
            + " | ".join(f"{ph[x]:.2f}" for x in PHASES) + f" | {other:.2f} | {mem} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["c_maml", "meta_cpo", "fomaml_trpo"])
    p.add_argument("--families", nargs="+", default=["point-circle", "point-goal"])
    p.add_argument("--envs", nargs="+", default=["preset", "16"])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every cell (as `safemeta train --set`), e.g. a cheaper critic fit")
    p.add_argument("--old", metavar="REV", help="also run each cell on this commit's code, alternating with this tree")
    p.add_argument("--rounds", type=int, default=1, help="runs per cell (and per tree with --old); each tree's best")
    p.add_argument("--one", nargs=3, metavar=("ALGO", "FAMILY", "ENVS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        if os.environ.get("SAFEMETA_TREE"):  # an older tree: check that its code is what runs
            import safemeta
            root = os.path.realpath(os.environ["SAFEMETA_TREE"])
            assert os.path.realpath(safemeta.__file__).startswith(root), (safemeta.__file__, root)
        print(json.dumps(measure(*args.one, args.iters, args.device, args.set)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"": None} if not args.old else {"old: ": export(args.old, Path(tmp)), "new: ": None}
        if args.old:
            print(f"old = {args.old}, new = this working tree; best of {args.rounds} alternating runs per tree\n")
        print("| algo | family | tasks x envs x episodes | s / iter | iter env-steps/s | collect env-steps/s | ratio | "
              + " | ".join(f"{ph} s" for ph in PHASES) + " | other s | peak RSS MB |")
        print("|---" * (9 + len(PHASES)) + "|")
        for family in args.families:
            for envs in args.envs:
                for algo in args.algos:
                    runs: dict[str, list[dict]] = {label: [] for label in trees}
                    for _ in range(args.rounds):
                        for label, tree in trees.items():
                            runs[label].append(run_cell(algo, family, envs, args, tree))
                    failed = [r["error"] for rs in runs.values() for r in rs if "error" in r]
                    if failed:
                        print(f"| {algo} | {family} | envs {envs} | failed: {failed[0]} |", flush=True)
                        continue
                    best = {label: best_of(rs) for label, rs in runs.items()}
                    for label, r in best.items():
                        print(row(r, label), flush=True)
                    if args.old:
                        print(f"| new / old | {family} | {best['new: ']['size']} | "
                              f"{best['old: ']['iter_s'] / best['new: ']['iter_s']:.2f}x faster |", flush=True)


if __name__ == "__main__":
    main()
