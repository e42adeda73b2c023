"""Env-steps per second of `Collector.collect` alone, this working tree against an older commit (issue 16).

    .venv/bin/python benchmarks/collection_speed.py [--old HEAD] [--repeats 5] [--threads 1] [--compiled]

Cases: point-goal at its preset size (5 tasks x 2 envs per task, 1000-step episodes), point-circle at its
preset size (5 x 4, 500 steps), and both at 16 envs per task; one whole episode per env, the preset's
(64, 64) tanh Gaussian policy with fixed random weights. The old code is ``git archive`` of ``--old`` in a
temporary directory; each measurement runs in a fresh subprocess whose PYTHONPATH points at one tree
(checked: the imported ``safemeta`` and ``safemeta.envs`` must come from it), old and new alternate, and
each case keeps its best of ``--repeats`` runs per tree (the machine is shared: the best run is the one
least disturbed by other jobs). Note that "new" is the whole working tree: `safemeta.rollout.batch.episode_means`,
which the collector calls once at the end, counts too. ``--compiled`` also measures this tree with compiled
collection (``trainer.compile_collection``) in the same alternation: families without a pure step collect eagerly
there; the warm-up collection, which compiles, is not timed, and its seconds are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [("point-goal", 5, 2), ("point-circle", 5, 4), ("point-goal", 5, 16), ("point-circle", 5, 16)]


def measure(threads: int, compiled: bool = False) -> dict:
    """Run in the tree on PYTHONPATH: each case's env-steps/s (after one warm-up collection; with ``compiled``, also
    the warm-up's seconds under ``"<case> first call s"``)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numpy as np
    import torch

    import safemeta
    import safemeta.envs.planar
    from safemeta.rollout.collector import Collector
    from safemeta.rollout.params import stack
    from safemeta.rollout.policy import GaussianActor, init_params
    from safemeta.registry import env as env_registry

    root = os.environ["PYTHONPATH"].split(os.pathsep)[0]
    for mod in (safemeta, safemeta.envs.planar):
        assert os.path.realpath(mod.__file__).startswith(os.path.realpath(root)), (mod.__file__, root)
    torch.set_num_threads(threads)
    rates = {}
    for name, n, e in CASES:
        cls = env_registry.get(name)
        fam = cls(cls.Config())
        venv = fam.make(fam.sample(n, "train", np.random.default_rng(0)), e, "cpu", 0)
        torch.manual_seed(0)
        actor = GaussianActor(venv.obs_dim, venv.act_dim, (64, 64), "tanh", -0.5)
        params = {k: v.clone() for k, v in stack(init_params(actor), n).items()}
        collector = Collector(actor, compiled=True) if compiled else Collector(actor)
        start = time.perf_counter()
        collector.collect(params, venv, 1, torch.Generator().manual_seed(0))
        if compiled:
            rates[f"{name} {n}x{e} first call s"] = time.perf_counter() - start
        start = time.perf_counter()
        batch = collector.collect(params, venv, 1, torch.Generator().manual_seed(1))
        rates[f"{name} {n}x{e}"] = batch.env_steps / (time.perf_counter() - start)
    return rates


def run_tree(tree: Path, threads: int, compiled: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", "--threads", str(threads),
                          *(["--compiled"] if compiled else [])],
                         env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"measurement in {tree} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def export(ref: str, into: Path) -> Path:
    """``ref``'s tree in ``into``, laid out as the editable install maps it (safemeta.envs = envs/, ...)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for package, folder in (("envs", "envs"), ("algorithms", "algorithms"), ("configs", "configs")):
        (into / "safemeta" / package).symlink_to(into / folder, target_is_directory=True)
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default="HEAD", help="the commit to compare against")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compiled", action="store_true", help="also measure this tree with compiled collection")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.threads, args.compiled)))
        return
    trees = [("old", False), ("new", False)] + ([("compiled", True)] if args.compiled else [])
    first_call: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = export(args.old, Path(tmp))
        best: dict[str, dict[str, float]] = {label: {} for label, _ in trees}
        for _ in range(args.repeats):
            for label, compiled in trees:
                for case, rate in run_tree(old_tree if label == "old" else REPO, args.threads, compiled).items():
                    if case.endswith(" first call s"):
                        first_call.setdefault(case.removesuffix(" first call s"), []).append(rate)
                    else:
                        best[label][case] = max(rate, best[label].get(case, 0.0))
    print(f"\nenv-steps/s of Collector.collect (best of {args.repeats}), old = {args.old}, torch threads = "
          f"{args.threads}\n")
    extra = " compiled | compiled / old | compiled / new | first compiled call (s) |" if args.compiled else ""
    print("| case (tasks x envs per task) | old | new | new / old |" + extra)
    print("|---|---|---|---|" + "---|---|---|---|" * bool(args.compiled))
    for case, old in best["old"].items():
        new = best["new"][case]
        row = f"| {case} | {old:,.0f} | {new:,.0f} | {new / old:.2f}x |"
        if args.compiled:
            comp, calls = best["compiled"][case], first_call[case]
            row += f" {comp:,.0f} | {comp / old:.2f}x | {comp / new:.2f}x | {max(calls):.1f} / {min(calls):.1f} |"
        print(row)
    if args.compiled:
        print("\nfirst compiled call: the slowest / fastest warm-up over the repeats (the first compiles; later ones "
              "find torch's on-disk cache). Families without a pure step collect eagerly under the flag.")


if __name__ == "__main__":
    main()
