"""`Batch`: the one data type between collectors and solvers, and GAE for reward and cost.

Every per-step field is shaped ``[N, T, E, ...]``: N tasks, T time steps, E envs per task. A solver
vmaps or reduces over N; GAE runs backward over T.

Truncation is not termination: at a time-limit truncation the value of the true next state
``next_obs`` is bootstrapped, at a termination it is zero, and in both cases the advantage
recursion does not run across the episode boundary (Schulman et al. 2016, eq. 16 with
delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)). The last step of a rollout is a
cut as well: it bootstraps from V(next_obs).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    obs: Tensor  # [N, T, E, obs_dim]
    act: Tensor  # [N, T, E, act_dim] (as sampled, before the env clips)
    logp: Tensor  # [N, T, E] log pi_old(a|s)
    rew: Tensor  # [N, T, E]
    cost: Tensor  # [N, T, E]
    terminated: Tensor  # [N, T, E] bool
    truncated: Tensor  # [N, T, E] bool
    next_obs: Tensor  # [N, T, E, obs_dim] true next state (before auto-reset)
    ep_return: Tensor  # [N] mean undiscounted return of episodes finished in this batch
    ep_cost: Tensor  # [N] mean undiscounted cost J_C of those episodes
    ep_count: Tensor  # [N] number of finished episodes
    adv_r: Tensor | None = None  # [N, T, E] GAE of reward
    adv_c: Tensor | None = None  # [N, T, E] GAE of cost
    ret_r: Tensor | None = None  # [N, T, E] lambda-return targets for the reward critic
    ret_c: Tensor | None = None  # [N, T, E] lambda-return targets for the cost critic
    cost_bonus: Tensor | None = None  # [N, T, E] Delta of a shaped cost C+ = C + Delta (safemeta.rollout.cost_shaping)
    ep_cost_bonus: Tensor | None = None  # [N] its mean per finished episode

    @property
    def constraint_cost(self) -> Tensor:
        """``[N, T, E]`` the per-step cost the constraint is on: C, or C+ = C + Delta when shaped."""
        return self.cost if self.cost_bonus is None else self.cost + self.cost_bonus

    @property
    def ep_constraint_cost(self) -> Tensor:
        """``[N]`` the constrained J: J_C, or J_{C+} = J_C + E[sum Delta] when shaped (``ep_cost`` stays J_C)."""
        return self.ep_cost if self.ep_cost_bonus is None else self.ep_cost + self.ep_cost_bonus

    @property
    def step_in_episode(self) -> Tensor:
        """``[N, T, E]`` long: t, the step's index within its episode (0 at each episode's first step). Every
        collection starts with a reset, so an env's column starts an episode at T = 0 and after every end (not for
        a subsample of time steps, `every`)."""
        ends = self.terminated | self.truncated
        starts = torch.ones_like(ends)
        starts[:, 1:] = ends[:, :-1]
        idx = torch.arange(ends.shape[1], device=ends.device).reshape(1, -1, 1).expand_as(ends)
        last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
        return idx - last_start

    def ep_discounted_constraint_cost(self, gamma: float) -> Tensor:
        """``[N]`` the discounted constrained J from the start states: per finished episode sum_t gamma^t c_t
        (c the constraint cost, C or C+), averaged over the finished episodes as ``ep_cost`` is."""
        c = self.constraint_cost
        discount = torch.pow(torch.as_tensor(gamma, dtype=c.dtype, device=c.device), self.step_in_episode.to(c.dtype))
        return episode_means(c * discount, self.terminated, self.truncated)

    @property
    def n_tasks(self) -> int:
        return self.obs.shape[0]

    @property
    def env_steps(self) -> int:
        return int(self.rew.numel())

    def every(self, k: int) -> "Batch":
        """Every k-th time step of the per-step fields (views; the per-episode statistics are kept)."""
        if k == 1:
            return self
        per_step = {f.name: getattr(self, f.name)[:, ::k] for f in fields(self)
                    if not f.name.startswith("ep_") and getattr(self, f.name) is not None}
        return replace(self, **per_step)

    def with_advantages(self, adv_r: Tensor, adv_c: Tensor, ret_r: Tensor, ret_c: Tensor) -> "Batch":
        return replace(self, adv_r=adv_r, adv_c=adv_c, ret_r=ret_r, ret_c=ret_c)

    @classmethod
    def concat(cls, parts: list["Batch"]) -> "Batch":
        """Batches of disjoint task groups (same T and E) as one batch over all their tasks, in order."""
        return cls(**{f.name: None if getattr(parts[0], f.name) is None
                      else torch.cat([getattr(b, f.name) for b in parts], 0) for f in fields(cls)})

    def pooled(self) -> "Batch":
        """All tasks as one task: ``[1, T, N*E, ...]`` (for a policy trained on pooled tasks)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f.name] = None
            elif f.name in ("ep_return", "ep_cost", "ep_cost_bonus"):
                w = self.ep_count.clamp(min=1)
                out[f.name] = ((v * w).sum() / w.sum()).reshape(1)
            elif f.name == "ep_count":
                out[f.name] = v.sum().reshape(1)
            else:
                n, t, e = v.shape[:3]
                out[f.name] = v.transpose(0, 1).reshape(1, t, n * e, *v.shape[3:])
        return Batch(**out)


def episode_means(x: Tensor, terminated: Tensor, truncated: Tensor) -> Tensor:
    """``[N]``: per-episode sums of ``x[N, T, E]``, averaged over the episodes that finished in the batch
    (the collector's ``ep_return`` / ``ep_cost``; 0 where none finished).

    Vectorized: the finished episodes of one env tile its steps up to its last episode end, so their sums
    add up to the sum of ``x`` over those steps (no loop over T)."""
    ends = terminated | truncated
    up_to_last_end = ends.flip(1).cumsum(1).flip(1) > 0  # [N, T, E]: at or before the env's last end
    total = (x * up_to_last_end.to(x.dtype)).sum(dim=(1, 2))
    count = ends.sum(dim=(1, 2)).to(x.dtype)
    return total / count.clamp(min=1)


def gae(rew: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor,
        gamma: float | Tensor, lam: float | Tensor) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over dim 1 of ``[N, T, E]`` tensors.

    Returns ``(advantages, returns)`` with ``returns = advantages + value`` (the TD(lambda) targets).
    ``gamma`` and ``lam`` may be ``[N, 1, 1]`` tensors (one pair per row: the critics annotate reward and
    cost rows in one call). The backward recursion runs time-major with one fused multiply-add per step, written
    straight into its row of the result (one op per step: at T = 1000 the loop's per-op overhead is its cost).
    Not differentiable: advantages and returns are data to the solvers and critic fits.
    """
    with torch.no_grad():
        not_term = (~terminated).to(rew.dtype)
        cont = (~(terminated | truncated)).to(rew.dtype)
        delta = (rew + gamma * next_value * not_term - value).transpose(0, 1).contiguous()  # [T, N, E]
        coef = (gamma * lam * cont).transpose(0, 1).contiguous()
        adv = torch.empty_like(delta)
        running = torch.zeros_like(delta[0])
        for d, c, out in zip(reversed(delta.unbind(0)), reversed(coef.unbind(0)), reversed(adv.unbind(0))):
            running = torch.addcmul(d, c, running, out=out)
        adv = adv.transpose(0, 1).contiguous()
        return adv, adv + value
