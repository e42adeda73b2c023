"""Reward and cost critics V_R, V_C per task: values, GAE annotation and fitting.

Critic parameters are stacked per task like the actor's. ``annotate`` fills a batch's advantages and
lambda-returns; ``fit`` regresses the critics on those returns. The adaptation loop fits first and then
annotates with the fitted critics (as MAML's baseline does).

Fitting is minibatch Adam over shuffled samples: ``critic.epochs`` passes over the batch's T x E samples
of each task in minibatches of ``critic.minibatch_size`` samples per task, at most
``critic.max_minibatches`` Adam steps per fit (so a large batch is fitted on a subsample and the fit's
cost stays bounded). V_R and V_C of all N tasks are one ``[2N, ...]`` stack evaluated by one batched
matmul chain; Adam is elementwise, so optimizing the stack on the sum of the per-row losses is 2N
independent fits. A step's gradient is autograd's backward pass written out (`critic_mse_grads`: the
same numbers, without the graph's bookkeeping). The shuffle comes from a generator seeded per fit from
``SHUFFLE_SEED`` and the batch's rewards, not from a run's random streams: a fit's result depends on its
batch and starting critics only, whoever computes it (a Ray worker or the driver) and whatever ran before.

Value targets are the GAE(lambda) returns of ``annotate``, which bootstrap from V(final obs) at a
time-limit truncation and not at a termination (``safemeta.rollout.batch.gae``), so they stay correct for
episodes that the time limit cuts.

``fit_and_annotate`` also reports the explained variance 1 - Var(target - V) / Var(target) of each task's fitted V_R
and V_C on the batch they were fitted to (``critic/ev_reward``, ``critic/ev_cost`` in a run's metrics).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from safemeta.rollout.batch import Batch, gae
from safemeta.config.schema import CriticConfig
from safemeta.rollout.cost_shaping import shape
from safemeta.rollout.params import Params, detach, stack
from safemeta.rollout.policy import CHUNK_ROWS, Critic, batched, critic_mse_grads

SHUFFLE_SEED = 20261201


@dataclass
class CriticParams:
    reward: Params  # [N, ...]
    cost: Params  # [N, ...]

    def stacked(self) -> Params:
        """V_R's rows then V_C's rows: ``[2N, ...]``."""
        return {k: torch.cat([self.reward[k], self.cost[k]], 0) for k in self.reward}

    @classmethod
    def split(cls, both: Params) -> "CriticParams":
        n = next(iter(both.values())).shape[0] // 2
        return cls({k: v[:n] for k, v in both.items()}, {k: v[n:] for k, v in both.items()})


def explained_variance(pred: Tensor, target: Tensor) -> Tensor:
    """Per row of ``[R, S]``: 1 - Var(target - pred) / Var(target) (1 is a perfect fit, 0 is the mean's); 0 for a
    row whose targets do not vary (e.g. no cost in the batch), where the ratio says nothing."""
    var = target.var(dim=1, correction=0)
    ev = 1.0 - (target - pred).var(dim=1, correction=0) / var.clamp(min=1e-8)
    return torch.where(var > 1e-8, ev, torch.zeros_like(ev))


class Critics:
    def __init__(self, obs_dim: int, cfg: CriticConfig):
        self.cfg = cfg
        self.module = Critic(obs_dim, cfg.hidden_sizes, cfg.activation)
        self.fn = batched(self.module)
        self.closed_grads = critic_mse_grads(self.module)  # a fit step's gradient without autograd (None: not covered)
        self.last_fit: dict[str, Tensor] = {}  # the last fit's per-task explained variances ([N] each)

    def values(self, params: Params, obs: Tensor) -> Tensor:
        """``obs[N, T, E, d] -> V[N, T, E]``."""
        n, t, e, d = obs.shape
        return self.fn(params, obs.reshape(n, t * e, d)).reshape(n, t, e)

    def annotate(self, batch: Batch, params: CriticParams) -> Batch:
        """Advantages and lambda-returns; the cost ones of the constraint cost (shaped when
        ``cost_shaping_horizon > 0``: the bonus is added here, once per batch)."""
        batch = shape(batch, self.cfg.cost_shaping_horizon, self.cfg.cost_shaping_coeff)
        return self._gae(batch, *self.state_values(batch, params))

    def state_values(self, batch: Batch, params: CriticParams) -> tuple[Tensor, Tensor]:
        """``V(s_t), V(s_{t+1})``, ``[2N, T, E]`` each (V_R's rows then V_C's).

        The true next state ``next_obs[t]`` is ``obs[t + 1]`` except where an episode ended (auto-reset) or
        the rollout does, so the critics are evaluated on ``obs`` and only on the ``next_obs`` that differ
        (compared, not assumed): one forward pass over the batch instead of two."""
        n, t, e, d = batch.obs.shape
        both = params.stacked()
        with torch.no_grad():
            v = self.pair_values(both, batch.obs.reshape(n, t * e, d)).reshape(2 * n, t, e)
            nv = torch.empty_like(v)
            nv[:, :-1] = v[:, 1:]
            differs = torch.ones(t, e, dtype=torch.bool, device=v.device)  # [T, E]: any task's next_obs differs
            differs[:-1] = (batch.next_obs[:, :-1] != batch.obs[:, 1:]).any(-1).any(0)
            if bool(differs.any()):
                where = differs.nonzero(as_tuple=True)
                x = batch.next_obs[:, where[0], where[1]]  # [N, K, d]
                nv[:, where[0], where[1]] = self.pair_values(both, x)
        return v, nv

    def pair_values(self, both: Params, x: Tensor) -> Tensor:
        """V_R's and V_C's rows ``both[2N, ...]`` on each task's ``x[N, S, d]`` -> ``[2N, S]``: the two critics of a
        task see the same samples, copied for the stacked evaluation one row chunk at a time (a copy of the whole
        batch for the pair costs more than the chunk's forward pass)."""
        return torch.cat([self.fn(both, c.repeat(2, 1, 1)) for c in x.split(CHUNK_ROWS, 1)], 1)

    def _gae(self, batch: Batch, v: Tensor, nv: Tensor) -> Batch:
        cfg, n = self.cfg, batch.n_tasks
        rows = lambda a, b: torch.tensor([a] * n + [b] * n, dtype=v.dtype, device=v.device).reshape(2 * n, 1, 1)  # noqa: E731
        with torch.no_grad():
            adv, ret = gae(torch.cat([batch.rew, batch.constraint_cost], 0), v, nv,
                           batch.terminated.repeat(2, 1, 1), batch.truncated.repeat(2, 1, 1),
                           rows(cfg.gamma, cfg.cost_gamma), rows(cfg.lam, cfg.cost_lam))
        return batch.with_advantages(adv[:n], adv[n:], ret[:n], ret[n:])

    def minibatches(self, samples: int, cap: int | None = None, seed: int = 0) -> list[Tensor]:
        """Index sets of the fit's Adam steps: ``epochs`` shuffled passes over ``samples`` in minibatches of
        ``minibatch_size`` (0: the whole batch), the first ``cap`` of them (default ``max_minibatches``; 0: all).
        The shuffle is drawn from ``SHUFFLE_SEED + seed``."""
        cfg = self.cfg
        cap = cfg.max_minibatches if cap is None else cap
        size = cfg.minibatch_size if 0 < cfg.minibatch_size < samples else samples
        per_epoch = -(-samples // size)
        total = cfg.epochs * per_epoch
        if cap:
            total = min(total, cap)
        gen = torch.Generator().manual_seed(SHUFFLE_SEED + seed)
        out: list[Tensor] = []
        while len(out) < total:
            perm = torch.randperm(samples, generator=gen, device=gen.device) if size < samples else \
                torch.arange(samples, device=gen.device)
            out.extend(perm[i:i + size] for i in range(0, samples, size))
        return out[:total]

    def fit(self, batch: Batch, params: CriticParams, cap: int | None = None) -> CriticParams:
        """Regress V_R on ret_r and V_C on ret_c (batch must be annotated) in at most ``cap`` Adam steps (default
        ``max_minibatches``)."""
        n, t, e, d = batch.obs.shape
        target = torch.cat([batch.ret_r, batch.ret_c], 0).reshape(2 * n, t * e)
        both = {k: v.clone().requires_grad_(True) for k, v in detach(params.stacked()).items()}
        # seeded by the batch's data (not a run's random stream): a capped fit leaves out different samples
        # from one batch to the next, and the same batch is fitted the same way wherever it is fitted
        seed = int(batch.rew.detach().abs().sum().double().mul(1000).remainder(2**31))
        steps = [idx.to(target.device) for idx in self.minibatches(t * e, cap, seed)] if self.cfg.epochs else []
        if steps:
            # V_R's and V_C's rows see the same samples: the batch is copied for them once, not once per step
            obs = batch.obs.detach().reshape(n, t * e, d).repeat(2, 1, 1)  # [2N, S, d]
            leaves = list(both.values())
            adam = FusedAdam(leaves, self.cfg.lr)
            for idx in steps:  # index_select: the same copy as obs[:, idx], 3-7x cheaper on CPU at these sizes
                x, y = obs.index_select(1, idx), target.index_select(1, idx)
                grads = self.closed_grads(both, x, y) if self.closed_grads else None  # autograd's numbers
                if grads is None:
                    loss = (self.fn(both, x) - y).pow(2).mean(dim=1)
                    grads = torch.autograd.grad(loss.sum(), leaves)
                adam.step(grads)
        return CriticParams.split(detach(both))

    def fit_and_annotate(self, batch: Batch, params: CriticParams, cap: int | None = None
                         ) -> tuple[Batch, CriticParams]:
        """Annotate with ``params`` (the fit's targets), fit, annotate with the fitted critics; ``last_fit`` gets
        the fitted critics' explained variances of those targets."""
        first = self.annotate(batch, params)  # shaped once here; the second pass reuses it
        params = self.fit(first, params, cap)
        v, nv = self.state_values(first, params)
        n = first.n_tasks
        target = torch.cat([first.ret_r, first.ret_c], 0).reshape(2 * n, -1)
        ev = explained_variance(v.reshape(2 * n, -1), target)
        self.last_fit = {"ev_reward": ev[:n], "ev_cost": ev[n:]}
        return self._gae(first, v, nv), params


class FusedAdam:
    """``torch.optim.Adam(params, lr, fused=True)`` stepped with given gradients, without the optimizer's per-step
    bookkeeping (its ``step`` and ``zero_grad`` cost 0.1-0.2 ms of Python per step on one CPU core, a fifth of a
    small critic fit's step). The update is torch's own fused kernel with the state the optimizer keeps
    (float32 step counts, moments), so the numbers are the optimizer's bit for bit (tests/test_critics.py checks
    them against it)."""

    def __init__(self, params: list[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]

    @torch.no_grad()
    def step(self, grads: tuple[Tensor, ...] | list[Tensor]) -> None:
        """One Adam step down ``grads`` (one per parameter). The kernel reads a gradient as laid out in memory, so
        one whose strides differ from its parameter's (e.g. a transposed weight's) is first copied into the
        parameter's layout, as autograd does for the ``.grad`` the optimizer reads."""
        grads = [g if g.stride() == p.stride() else torch.empty_like(p).copy_(g) for g, p in zip(grads, self.params)]
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.steps,
                           amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
                           eps=self.eps, maximize=False, grad_scale=None, found_inf=None)


def single(reward: Params, cost: Params) -> CriticParams:
    """One critic pair (unstacked params) as a one-task ``CriticParams``."""
    return CriticParams(stack(reward, 1), stack(cost, 1))
