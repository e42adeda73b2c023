"""Collect a `Batch` for every task of a `VecCMDP` in one vectorized loop.

Each task's actor parameters act on that task's E envs (``vmap`` over tasks). Actions are sampled
with an explicit ``torch.Generator`` so runs are reproducible and resumable. Every collection resets
the envs with a fresh seed and runs whole episodes (``episodes_per_env * horizon`` steps), so the
episode statistics count complete episodes and each inner step gets a fixed env-step budget.
"""
from __future__ import annotations

import math

import torch

from safemeta.batch import Batch, episode_means
from safemeta.obs_norm import RunningObsNorm
from safemeta.params import Params
from safemeta.policy import GaussianActor, batched
from safemeta.vec_cmdp import VecCMDP, checked_reset, checked_step

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Collector:
    def __init__(self, actor: GaussianActor, obs_norm: RunningObsNorm | None = None):
        self.actor_fn = batched(actor)
        self.obs_norm = obs_norm  # normalizes what the policy sees and the batch stores; gets the raw moments

    @torch.no_grad()
    def collect(self, params: Params, venv: VecCMDP, episodes_per_env: int, gen: torch.Generator) -> Batch:
        n, e = venv.n_tasks, venv.envs_per_task
        steps = episodes_per_env * venv.horizon
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        norm = self.obs_norm if self.obs_norm is not None else (lambda o: o)
        raw = checked_reset(venv, seed)
        obs = norm(raw)
        buf: dict[str, torch.Tensor] = {}

        def put(name: str, t: int, v: torch.Tensor) -> None:
            """Write step t of a ``[N*E, ...]`` field straight into its ``[N, T, E, ...]`` buffer (allocated on
            first use): no per-step list of tensors to stack and transpose at the end."""
            v = v.reshape(n, e, *v.shape[1:])
            if name not in buf:
                buf[name] = torch.empty((n, steps, e, *v.shape[2:]), dtype=v.dtype, device=v.device)
            buf[name][:, t] = v

        params = {k: v.detach() for k, v in params.items()}
        for t in range(steps):
            mean, log_std = self.actor_fn(params, obs.reshape(n, e, -1))
            log_std = log_std.contiguous()  # typically a broadcast view: elementwise ops on it are ~10x slower
            noise = torch.randn(mean.shape, generator=gen)
            act = mean + log_std.exp() * noise
            logp = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
            if self.obs_norm is not None:
                self.obs_norm.observe(raw)
            raw, rew, cost, term, trunc, info = checked_step(venv, act.reshape(n * e, -1))
            nxt = norm(raw)
            for k, v in (("obs", obs), ("act", act.reshape(n * e, -1)), ("logp", logp.reshape(n * e)),
                         ("rew", rew), ("cost", cost), ("term", term), ("trunc", trunc),
                         ("next_obs", norm(info["final_obs"]))):
                put(k, t, v)
            obs = nxt

        term, trunc = buf["term"], buf["trunc"]
        return Batch(obs=buf["obs"], act=buf["act"], logp=buf["logp"], rew=buf["rew"], cost=buf["cost"],
                     terminated=term, truncated=trunc, next_obs=buf["next_obs"],
                     ep_return=episode_means(buf["rew"], term, trunc), ep_cost=episode_means(buf["cost"], term, trunc),
                     ep_count=(term | trunc).sum(dim=(1, 2)).to(buf["rew"].dtype))
