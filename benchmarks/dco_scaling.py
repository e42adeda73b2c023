"""Time and memory of one task's K-step Meta-CPO meta-gradient, per policy size and DCO backend.

    .venv/bin/python benchmarks/dco_scaling.py [--k 5] [--timeout 60] [--family point-circle]

For each policy size (about 1e3, 1e4 and 1e5 parameters) the script collects K + 1 real rollouts of one
task once (4 envs x one episode each; collection is not timed), then, per backend (``analytic`` with the
Fisher metric, ``analytic``, ``cvxpylayers`` and ``qpth`` with the Euclidean metric), times the
meta-gradient exactly as `dco_cpo` computes it: K differentiable CPO steps from theta on those rollouts
(`adaptation.replay`, forward) and the vector-Jacobian products dF/dtheta and dG/dtheta through all of
them (`dco_cpo.meta_gradients`, backward). Every row runs in a child process with a wall-clock limit
(``--timeout``, 60 s by default: the cvxpylayers rows stop where they stop finishing); memory is the
child's peak resident set size above what it held before the measurement. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {"1e3": (32, 16), "1e4": (96, 80), "1e5": (300, 300)}
BACKENDS = [("analytic", "fisher"), ("analytic", "euclidean"), ("cvxpylayers", "euclidean"), ("qpth", "euclidean")]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(family: str, hidden: tuple[int, ...], backend: str, metric: str, k: int) -> dict:
    """One row, in this process: collect K+1 rollouts, then time the differentiable replay + VJPs."""
    import numpy as np
    import torch

    import safemeta
    from safemeta.training.adaptation import AdaptationResult, replay
    from safemeta.algorithms.outer.dco_cpo import meta_gradients
    from safemeta.training.model import stacked_theta
    from safemeta.rollout.params import num_params, stack
    from safemeta.training.trainer import MetaTrainer

    torch.set_num_threads(1)
    cfg = safemeta.resolve_config([("benchmark", {
        "algo": "meta_cpo", "env": family, "policy": {"hidden_sizes": list(hidden)},
        "trainer": {"adapt_steps": k, "envs_per_task": 4},
        "inner_cfg": {"cpo": {"backend": backend, "metric": metric}}, "log": {"progress": False}})])
    t = MetaTrainer(cfg)
    venv = t.family.make(t.family.sample(1, "train", np.random.default_rng(0)), 4, "cpu", 0)
    state = t.inner.init_state(1, t.family.cost_limit_for("train"))
    data = t.adapter.adapt(stacked_theta(t.meta, 1), venv, k, state, t.meta.critics_for(1), 1,
                           torch.Generator().manual_seed(0))
    theta = t.meta.theta
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    phi = replay(t.inner, stack(theta, 1), data.batches[:k], dict(state), differentiable=True)
    t1 = time.perf_counter()
    meta_gradients(t.inner, theta, AdaptationResult([stack(theta, 1), phi], data.batches, state, None))
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"params": num_params(stack(theta, 1)), "samples": int(data.batches[0].rew.numel()),
            "forward_s": t1 - t0, "backward_s": t2 - t1, "total_s": t2 - t0, "peak_mb": max(peak - rss0, 0.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="point-circle")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--row", nargs=3, metavar=("SIZE", "BACKEND", "METRIC"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        size, backend, metric = args.row
        print(json.dumps(measure(args.family, SIZES[size], backend, metric, args.k)))
        return
    print(f"K = {args.k} CPO steps, one {args.family} task, 4 envs x 1 episode per rollout, 1 thread, "
          f"limit {args.timeout:.0f} s per row\n")
    print("| params | backend | metric | forward (s) | backward (s) | total (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    stop = set()  # a (backend, metric) that timed out or failed at a smaller size is not tried at larger ones
    for size in args.sizes:
        for backend, metric in BACKENDS:
            label = f"| ~{size} ({'x'.join(map(str, SIZES[size]))}) | {backend} | {metric} |"
            if (backend, metric) in stop:
                print(f"{label} - | - | skipped (over {args.timeout:.0f} s at a smaller size) | - |", flush=True)
                continue
            cmd = [sys.executable, __file__, "--family", args.family, "--k", str(args.k), "--row", size, backend, metric]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
            except subprocess.TimeoutExpired:
                stop.add((backend, metric))
                print(f"{label} - | - | over {args.timeout:.0f} s | - |", flush=True)
                continue
            if out.returncode != 0:
                stop.add((backend, metric))
                reason = (out.stderr.strip().splitlines() or ["?"])[-1][:80]
                print(f"{label} - | - | failed: {reason} | - |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = f"| {r['params']:,} ({'x'.join(map(str, SIZES[size]))}) | {backend} | {metric} |"
            print(f"{label} {r['forward_s']:.2f} | {r['backward_s']:.2f} | {r['total_s']:.2f} | {r['peak_mb']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
