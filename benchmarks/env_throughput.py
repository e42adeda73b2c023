"""Env-steps per second of the built-in batched families vs the matching Safety-Gymnasium task.

    .venv/bin/python benchmarks/env_throughput.py [--threads 2] [--envs 1 64 1024 4096] [--sg-steps 2000] [--device cpu]

For every built-in family: random actions at 1, 64, 1024 and 4096 envs (4 tasks once there are >= 4
envs), auto-resets included; then collection of whole episodes with the default MLP policy (64, 64)
through `safemeta.rollout.collector.Collector` at 4096 envs. For the Safety-Gymnasium twin: one env stepped
with random actions for ``--sg-steps`` steps, timed without and with its resets (Safety-Gymnasium rebuilds
the world at each reset). Everything runs in one process, on the same machine, in one run,
so the ratio column compares like with like. ``--device cuda`` steps the built-in families and the policy on a GPU
(Safety-Gymnasium stays on the CPU); a CUDA figure is timed after a synchronize.

OMP_WAIT_POLICY defaults to PASSIVE here (export it to override): with torch's libgomp and its default
active wait, a 2-thread op on this shared 2-core machine waits out a scheduler time slice whenever another
process holds a core (measured: 8 ms instead of 0.08 ms for one exp over [4096, 16], so every
multi-threaded figure collapsed ~100x while other jobs ran); passive waiting does not.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import numpy as np  # noqa: E402
import torch  # noqa: E402

from safemeta.rollout.collector import Collector  # noqa: E402
from safemeta.rollout.params import stack  # noqa: E402
from safemeta.rollout.policy import GaussianActor, init_params  # noqa: E402
from safemeta.registry import env as env_registry  # noqa: E402

SG_TWINS = {"point-circle": "SafetyPointCircle1-v0", "car-circle-hazard": "SafetyCarCircle1-v0",
            "point-button": "SafetyPointButton1-v0", "point-goal": "SafetyPointGoal2-v0"}


def family(name: str):
    cls = env_registry.get(name)
    return cls(cls.Config())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def builtin_rate(name: str, n_envs: int, device: str = "cpu", min_seconds: float = 1.0) -> float:
    fam = family(name)
    n_tasks = 4 if n_envs >= 4 else 1
    venv = fam.make(fam.sample(n_tasks, "train", np.random.default_rng(0)), n_envs // n_tasks, device, seed=0)
    venv.reset(0)
    gen = torch.Generator(device=device).manual_seed(0)
    act = lambda: torch.rand(venv.num_envs, venv.act_dim, generator=gen, device=device) * 2 - 1  # noqa: E731
    for _ in range(5):
        venv.step(act())
    sync(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for _ in range(20):
            venv.step(act())
        steps += 20
    sync(device)
    return steps * venv.num_envs / (time.perf_counter() - start)


def collection_rate(name: str, n_envs: int = 4096, device: str = "cpu") -> float:
    fam = family(name)
    venv = fam.make(fam.sample(4, "train", np.random.default_rng(0)), n_envs // 4, device, seed=0)
    actor = GaussianActor(venv.obs_dim, venv.act_dim, (64, 64), "tanh", -0.5)
    collector = Collector(actor)
    params = {k: v.to(device) for k, v in stack(init_params(actor), 4).items()}
    episodes = max(1, 200 // fam.horizon)
    gen = torch.Generator().manual_seed(0)
    sync(device)
    start = time.perf_counter()
    batch = collector.collect(params, venv, episodes, gen)
    sync(device)
    return batch.env_steps / (time.perf_counter() - start)


def sg_rates(env_id: str, steps: int) -> tuple[float, float]:
    """(steps/s not counting resets, steps/s counting them) of one Safety-Gymnasium env."""
    from safemeta.compat.safety_gym import import_safety_gymnasium

    sg = import_safety_gymnasium()
    env = sg.make(env_id)
    env.reset(seed=0)
    step_time = reset_time = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        *_, terminated, truncated, _ = env.step(env.action_space.sample())
        t1 = time.perf_counter()
        step_time += t1 - t0
        if terminated or truncated:
            env.reset()
            reset_time += time.perf_counter() - t1
    env.close()
    return steps / step_time, steps / (step_time + reset_time)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--envs", type=int, nargs="+", default=[1, 64, 1024, 4096])
    p.add_argument("--sg-steps", type=int, default=2000)
    p.add_argument("--families", nargs="+", default=None)
    p.add_argument("--device", default="cpu", help="where the built-in families step (cpu, cuda)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.families or [n for n in env_registry.names() if not n.startswith("sg-")]
    header = ["family"] + [f"{n} envs" for n in args.envs] + ["collect 4096 (MLP)", "SG twin", "SG no reset",
                                                                "SG with resets", f"ratio @{max(args.envs)}"]
    rows = []
    for name in names:
        rates = [builtin_rate(name, n, args.device) for n in args.envs]
        collect = collection_rate(name, device=args.device)
        twin = SG_TWINS.get(name)
        sg = sg_rates(twin, args.sg_steps) if twin else (float("nan"), float("nan"))
        ratio = rates[-1] / sg[0] if twin else float("nan")
        rows.append([name, *[f"{r:,.0f}" for r in rates], f"{collect:,.0f}", twin or "-",
                     *(f"{x:,.0f}" if twin else "-" for x in sg), f"{ratio:,.0f}x" if twin else "-"])
        print(" | ".join(rows[-1]), flush=True)
    print()
    print(f"env-steps/s on {args.device}, torch threads = {args.threads}, OMP_WAIT_POLICY = {os.environ['OMP_WAIT_POLICY']}, "
          f"torch {torch.__version__}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
