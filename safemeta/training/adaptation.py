"""Per-task adaptation: K inner steps for every task of a `VecCMDP` at once.

    theta_0 = initial params (stacked per task)
    for k in 0..K-1:  batch_k = collect(theta_k);  fit critics, GAE;  theta_{k+1} = inner.step(theta_k, batch_k)
    optionally batch_K = collect(theta_K)  (the post-adaptation rollout an outer updater needs)

Every step uses fresh rollouts of the *current* local policy (unlike the Meta-CPO reference code,
which reused the meta-policy's first samples). With ``differentiable=True`` the returned parameters
keep the graph to theta_0.

`replay` re-runs the K inner steps from other initial parameters on the *stored* batches (their
importance-weighted surrogates): the post-adaptation objective as a deterministic function of theta,
which a meta line search evaluates and finite differences check the meta-gradient against.

A step that leaves a non-finite parameter or state value for a task (a NaN / Inf gradient or step) is
not taken for that task: it keeps its previous parameters and state, and ``info["nonfinite_step"]`` is 1
for it (the trainer logs its mean as ``inner/nonfinite_step``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import InnerSolver, State
from safemeta.rollout.batch import Batch
from safemeta.rollout.collector import Collector
from safemeta.rollout.critics import CriticParams, Critics
from safemeta.rollout.params import Params, select
from safemeta.rollout.vec_cmdp import VecCMDP


@dataclass
class AdaptationResult:
    params: list[Params]  # theta_0 .. theta_K, [N, ...] each
    batches: list[Batch]  # batch_k collected with theta_k (k = 0..K, the last only with final_rollout)
    state: State  # the inner solver's state after the K steps
    critics: CriticParams
    infos: list[dict[str, Tensor]] = field(default_factory=list)
    critic_infos: list[dict[str, Tensor]] = field(default_factory=list)  # per critic fit: [N] explained variances
    initial_state: State | None = None  # the inner solver's state before the first step
    # task-summed terms an outer updater computed where the graph through the inner steps lives (a Ray
    # worker; `OuterUpdater.shard_terms`), or None when it computes from ``params`` itself
    meta_terms: dict[str, Tensor] | None = None
    # batch 0 of every task pooled into one, annotated by the critics' initialization after the trainer fitted
    # it on that batch (`safemeta.training.model.fit_meta_critics`); set by the trainer before the outer update
    meta_batch: Batch | None = None

    @property
    def env_steps(self) -> int:
        return sum(b.env_steps for b in self.batches)

    def episode_cost_paid(self) -> float:
        """Sum over batches and tasks of the episodic cost actually incurred while collecting."""
        return float(sum((b.ep_cost * b.ep_count).sum() for b in self.batches))


class Adapter:
    def __init__(self, collector: Collector, critics: Critics, inner: InnerSolver):
        self.collector, self.critics, self.inner = collector, critics, inner

    def rollout(self, params: Params, venv: VecCMDP, critic_params: CriticParams, episodes_per_env: int,
                gen: torch.Generator) -> tuple[Batch, CriticParams]:
        batch = self.collector.collect(params, venv, episodes_per_env, gen)
        return self.critics.fit_and_annotate(batch, critic_params)

    def adapt(self, init: Params, venv: VecCMDP, steps: int, state: State, critic_params: CriticParams,
              episodes_per_env: int, gen: torch.Generator, final_rollout: bool = True,
              differentiable: bool = False) -> AdaptationResult:
        """Each rollout's critics start from the previous rollout's fitted ones (the first from
        ``critic_params``); ``critic_infos`` holds every fit's explained variances."""
        params, batches, infos, critic_infos, all_params = init, [], [], [], [init]
        initial_state = {k: v.clone() for k, v in state.items()}
        for k in range(steps + int(final_rollout)):
            batch, critic_params = self.rollout(params, venv, critic_params, episodes_per_env, gen)
            batches.append(batch)
            critic_infos.append(dict(self.critics.last_fit))
            if k == steps:
                break
            params, state, info = finite_step(self.inner, params, batch, state, differentiable)
            infos.append(info)
            all_params.append(params)
        return AdaptationResult(all_params, batches, state, critic_params, infos, initial_state=initial_state,
                                critic_infos=critic_infos)


def finite_step(inner: InnerSolver, params: Params, batch: Batch, state: State, differentiable: bool
                ) -> tuple[Params, State, dict[str, Tensor]]:
    """``inner.step``, undone per task where it produced a non-finite parameter or state value."""
    new_params, new_state, info = inner.step(params, batch, state, differentiable=differentiable)
    ok = torch.ones(batch.n_tasks, dtype=torch.bool, device=next(iter(params.values())).device)
    for v in (*new_params.values(), *new_state.values()):
        if v.is_floating_point():
            ok &= torch.isfinite(v.detach()).reshape(v.shape[0], -1).all(1)
    if not bool(ok.all()):
        new_params = select(params, ok, new_params)
        new_state = {k: torch.where(ok.reshape(-1, *([1] * (v.dim() - 1))), v, state[k]) if v.is_floating_point()
                     else v for k, v in new_state.items()}
    return new_params, new_state, {**info, "nonfinite_step": (~ok).float()}


def replay(inner: InnerSolver, init: Params, batches: list[Batch], state: State,
           differentiable: bool = False) -> Params:
    """theta_K from ``init`` by one inner step on each of ``batches`` in turn (no new rollouts); the
    steps use autograd, so this runs with gradients enabled even when called under ``no_grad``."""
    params = init
    with torch.enable_grad():
        for batch in batches:
            params, state, _ = finite_step(inner, params, batch, state, differentiable)
    if not differentiable:
        params = {k: v.detach() for k, v in params.items()}
    return params
