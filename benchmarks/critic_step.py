"""One Adam step of a critic fit: the closed-form gradient (`critic_mse_grads`) against autograd's, same run.

    .venv/bin/python benchmarks/critic_step.py [--rounds 5] [--steps 100] [--threads 1]

Each case is a stacked ``[rows, samples, obs_dim]`` minibatch as `safemeta.rollout.critics.Critics.fit` steps on it
(the default (64, 64) tanh critic, its FusedAdam, the minibatch gathered with ``index_select`` from a 4,000-sample
batch): 10 rows = V_R and V_C of 5 tasks (the presets' per-task fits), 2 rows = the critics' initialization fitted
on the pooled rollouts. The two gradients are checked to be equal bit for bit first; then the paths alternate
``--rounds`` times, ``--steps`` Adam steps each, and each path's best ms per step is printed with the ratio.
"""
from __future__ import annotations

import argparse
import time

import torch

from safemeta.rollout.critics import FusedAdam
from safemeta.rollout.params import stack
from safemeta.rollout.policy import Critic, batched, critic_mse_grads, init_params
from safemeta.rollout.vec_cmdp import keep_freed_memory

CASES = [(10, 256, 52), (10, 256, 36), (2, 256, 52)]  # point-goal's and point-circle's observation widths


def autograd_grads(fn, params, x, target):
    loss = (fn(params, x) - target).pow(2).mean(dim=1)
    return torch.autograd.grad(loss.sum(), list(params.values()))


def time_path(path: str, critic: Critic, start: dict, obs: torch.Tensor, target: torch.Tensor, steps: int) -> float:
    fn, closed = batched(critic), critic_mse_grads(critic)
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    adam = FusedAdam(list(params.values()), 3e-3)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(obs.shape[1], generator=gen)[:256] for _ in range(steps)]
    t0 = time.perf_counter()
    for idx in batches:
        x, y = obs.index_select(1, idx), target.index_select(1, idx)
        grads = closed(params, x, y) if path == "closed form" else autograd_grads(fn, params, x, y)
        adam.step(grads)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as a run on CPU has it (its env does this)
    print(f"ms per critic Adam step (best of {args.rounds} x {args.steps} steps), torch threads = {args.threads}\n")
    print("| rows x samples x obs dim | autograd | closed form | autograd / closed form |")
    print("|---|---|---|---|")
    for rows, samples, dim in CASES:
        torch.manual_seed(0)
        critic = Critic(dim, (64, 64), "tanh")
        start = stack(init_params(critic), rows)
        obs, target = torch.randn(rows, 4000, dim), torch.randn(rows, 4000)
        probe = {k: v.clone().requires_grad_(True) for k, v in start.items()}
        x, y = obs[:, :samples], target[:, :samples]
        same = all(torch.equal(a, b) for a, b in zip(critic_mse_grads(critic)(probe, x, y),
                                                      autograd_grads(batched(critic), probe, x, y)))
        if not same:
            raise SystemExit(f"closed-form and autograd gradients differ at {rows} x {samples} x {dim}")
        best = {"autograd": float("inf"), "closed form": float("inf")}
        for _ in range(args.rounds):
            for path in best:
                best[path] = min(best[path], time_path(path, critic, start, obs, target, args.steps))
        print(f"| {rows} x {samples} x {dim} | {best['autograd'] * 1e3:.2f} | {best['closed form'] * 1e3:.2f} | "
              f"{best['autograd'] / best['closed form']:.2f}x |")


if __name__ == "__main__":
    main()
