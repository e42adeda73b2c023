"""The `InnerSolver` contract (DESIGN.md "Contracts").

An inner solver maps per-task stacked actor parameters and a `Batch` (advantages filled in) to new
parameters, for all N tasks of the batch at once. Its per-task state (multipliers, step sizes, the
cost limit d) is a dict of ``[N]`` tensors so it can be checkpointed and set from outside.

Capabilities are class attributes that outer updaters check:
- ``supports_differentiable``: ``step(..., differentiable=True)`` keeps the graph from the returned
  parameters back to the input parameters (needed by Meta-CPO);
- ``supports_step_size``: a per-task step size in ``state["step_size"]`` is honoured (Meta-SRL);
- ``policy_kinds``: the kinds of actor it can update (``GaussianActor.kind``); the meta-test refuses a
  fine-tuning solver (``eval.inner``) that cannot update the run's policy.

``output(result)`` is the policy a solver hands out after its steps (``MetaTrainer.adapted_params``):
with ``cfg.output = "last"`` the last iterate theta_K, with ``"feasible"`` per task the latest iterate whose
own batch estimated its constrained J within d (+ the solver's tolerance), theta_K where none did
(``latest_within_limit``; CRPO's Algorithm 1 outputs from that set, so it is CRPO's default). Outer
updaters differentiate theta_K whatever ``output`` says; meta-tests report every theta_k's batch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import Tensor

from safemeta.algorithms.inner.natural_gradient import fisher_vector_product
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.rollout.params import Params, select
from safemeta.rollout.policy import GaussianActor, batched, gaussian_fisher, gaussian_kl, gaussian_log_prob

State = dict[str, Tensor]
Dist = tuple[Tensor, Tensor]  # a Gaussian policy on a batch's states: mean [N, S, A], log-std


class Iterates(Protocol):
    """What ``output`` reads of an adaptation (`safemeta.training.adaptation.AdaptationResult` is one):
    theta_0 .. theta_K, the batch each collected, and the solver's state after the steps."""

    params: list[Params]
    batches: list[Batch]
    state: State


class InnerSolver(ABC):
    Config: ClassVar[type]
    supports_differentiable: ClassVar[bool] = False
    supports_step_size: ClassVar[bool] = False
    policy_kinds: ClassVar[tuple[str, ...]] = ("gaussian",)
    device: torch.device = torch.device("cpu")  # where per-task state lives; the trainer sets ``trainer.device``

    def __init__(self, cfg: Any, actor: GaussianActor):
        self.cfg = cfg
        self.actor = actor
        self.actor_fn = batched(actor)

    def init_state(self, n_tasks: int, cost_limit: float | Tensor, **overrides: Tensor) -> State:
        """Fresh per-task state on ``self.device``; ``overrides`` (e.g. ``lagrange`` from a meta multiplier) replace
        defaults. `default_state` runs with ``self.device`` as the default device of its factory calls."""
        with torch.device(self.device):
            d = torch.as_tensor(cost_limit, dtype=torch.float32, device=self.device).expand(n_tasks).clone()
            state = {"cost_limit": d, **self.default_state(n_tasks)}
        for k, v in overrides.items():
            if k not in state:
                raise KeyError(f"{type(self).__name__} has no state '{k}' (has: {', '.join(state)})")
            state[k] = torch.as_tensor(v, dtype=torch.float32, device=self.device).expand(n_tasks).clone()
        return state

    def default_state(self, n_tasks: int) -> State:
        return {}

    @abstractmethod
    def step(self, params: Params, batch: Batch, state: State, differentiable: bool = False
             ) -> tuple[Params, State, dict[str, Tensor]]:
        """One update for every task; returns new params, new state and per-task ``[N]`` diagnostics."""

    @property
    def output_rule(self) -> str:
        """``"last"`` or ``"feasible"``: the config's ``output`` (a solver without one hands out the last iterate)."""
        return getattr(self.cfg, "output", "last")

    @property
    def tolerance(self) -> float:
        """How far above d a cost estimate still counts as feasible (CRPO's eta; 0 for the others)."""
        return 0.0

    def output(self, result: Iterates) -> Params:
        """The per-task policy to hand out after ``result``'s steps (see the module docstring)."""
        if self.output_rule == "last":
            return result.params[-1]
        return latest_within_limit(result, self.tolerance)

    @abstractmethod
    def advantages(self, batch: Batch, state: State) -> Tensor:
        """The per-task advantage the policy step ascends, ``[N, T, E]``."""

    # -- shared pieces of the policy-gradient objective -------------------------------------------
    # A forward pass of the actor over a whole batch is most of what a line-search trial costs, so the methods
    # below take the pass as ``dist`` (from `policy_on`) where a caller evaluates several terms at one point; the
    # numbers are those of separate passes.
    def policy_on(self, params: Params, batch: Batch) -> Dist:
        """pi_params on the batch's states: mean ``[N, T*E, A]`` and log-std, from one forward pass."""
        n, t, e = batch.logp.shape
        return self.actor_fn(params, batch.obs.reshape(n, t * e, -1))

    def log_prob(self, params: Params, batch: Batch, dist: Dist | None = None) -> Tensor:
        n, t, e = batch.logp.shape
        mean, log_std = self.policy_on(params, batch) if dist is None else dist
        return gaussian_log_prob(batch.act.reshape(n, t * e, -1), mean, log_std).reshape(n, t, e)

    def surrogates(self, params: Params, batch: Batch, *advs: Tensor, dist: Dist | None = None) -> tuple[Tensor, ...]:
        """L(theta) = E[pi_theta(a|s) / pi_old(a|s) * A] per task ``[N]`` (TRPO eq. 14) for each advantage in
        ``advs``, from one ratio."""
        ratio = torch.exp(self.log_prob(params, batch, dist) - batch.logp)
        return tuple((ratio * adv).mean(dim=(1, 2)) for adv in advs)

    def surrogate(self, params: Params, batch: Batch, adv: Tensor, dist: Dist | None = None) -> Tensor:
        """`surrogates` of one advantage."""
        return self.surrogates(params, batch, adv, dist=dist)[0]

    def objective(self, params: Params, batch: Batch, state: State) -> Tensor:
        """The per-task objective an outer updater differentiates after adaptation."""
        return self.surrogate(params, batch, self.advantages(batch, state).detach())

    def fisher_batch(self, batch: Batch) -> Batch:
        """The samples the Fisher-vector products average over: every ``cfg.fvp_subsample``-th time step.
        The conjugate-gradient solve is most of a natural-gradient step's cost and F is an average over
        states, so a subsample estimates it well (tests/test_inner_trpo.py bounds the direction's angle);
        the KL of the resulting step is still measured and bounded on the whole batch."""
        return batch.every(self.cfg.fvp_subsample)

    def fisher_product(self, params: Params, batch: Batch, damping: float, create_graph: bool = False
                       ) -> Callable[[Tensor], Tensor]:
        """``v[N, P] -> (F + damping I) v``, F the Hessian in q of `mean_kl` (params || q) at q = ``params`` on
        ``batch``'s states: the Fisher matrix of the natural-gradient step.

        Without ``create_graph`` a Gaussian MLP actor's products use the closed Gauss-Newton form
        (`safemeta.rollout.policy.gaussian_fisher`: the same F, ~1.7x cheaper than autograd's double backward);
        with it (a differentiable step: F depends on the local parameters through both arguments of the KL)
        they differentiate the KL twice (`fisher_vector_product`), as does any other actor."""
        if not create_graph:
            n, t, e = batch.logp.shape
            closed = gaussian_fisher(self.actor, params, batch.obs.reshape(n, t * e, -1))
            if closed is not None:
                return lambda v: closed(v) + damping * v
        return fisher_vector_product(lambda q: self.mean_kl(params, q, batch, detach_old=not create_graph), params,
                                     damping, create_graph=create_graph)

    def mean_kl(self, old: Params | None, new: Params, batch: Batch, detach_old: bool = True,
                old_dist: Dist | None = None, new_dist: Dist | None = None) -> Tensor:
        """Mean over visited states of KL(pi_old(.|s) || pi_new(.|s)), per task ``[N]``; ``old_dist`` / ``new_dist``
        (`policy_on`) stand for the forward passes of ``old`` / ``new`` when the caller has them.

        ``detach_old=False`` keeps the graph through ``old`` too: the Fisher matrix of a differentiable
        step then depends on the local parameters through both arguments, as it truly does.
        """
        if old_dist is None:
            with torch.set_grad_enabled(not detach_old and torch.is_grad_enabled()):
                old_dist = self.policy_on(old, batch)
        m1, s1 = self.policy_on(new, batch) if new_dist is None else new_dist
        return gaussian_kl(*old_dist, m1, s1).mean(dim=1)

    def trial(self, old_dist: Dist, cand: Params, batch: Batch, *advs: Tensor) -> tuple[Tensor, ...]:
        """What a line search checks at a candidate, from one forward pass of it: KL(pi_old || pi_cand) per task,
        then the surrogate of each advantage in ``advs``."""
        dist = self.policy_on(cand, batch)
        return self.mean_kl(None, cand, batch, old_dist=old_dist, new_dist=dist), \
            *self.surrogates(cand, batch, *advs, dist=dist)


def fvp_subsample_field():
    """The ``fvp_subsample`` config field of a natural-gradient solver (see ``InnerSolver.fisher_batch``)."""
    return spec(4, ge=1, doc="Fisher-vector products of the conjugate-gradient solve on every k-th time step of the "
                             "batch (1: all); the step's KL check, line search and CRPO's KL cap use the whole batch")


def output_field(default: str):
    """The ``output`` config field of a constrained solver (see ``InnerSolver.output``)."""
    return spec(default, doc="the policy handed out after the steps: 'last', the last iterate, or 'feasible', the "
                             "latest iterate whose own cost estimate was within d (+ tolerance)")


def latest_within_limit(result: Iterates, tolerance: float = 0.0) -> Params:
    """Per task, the latest theta_k whose batch (collected by theta_k) has ``ep_constraint_cost <= d +
    tolerance``; theta_K where none has. theta_K is judged only if a rollout followed the last step."""
    out = result.params[-1]
    limit = result.state["cost_limit"] + tolerance
    for params, batch in zip(result.params, result.batches):
        out = select(out, batch.ep_constraint_cost <= limit, params)
    return out


def episode_cost_advantages(batch: Batch) -> Tensor:
    """Centered cost advantages scaled by env steps per finished episode, ``[N, T, E]``.

    With them the surrogate E[ratio * A_C] and its gradient are changes of the per-episode cost J_C,
    in the units of the constraint value b = J_C - d (CPO eq. 3; Meta-CPO eq. 10's G)."""
    steps_per_episode = batch.rew[0].numel() / batch.ep_count.clamp(min=1)
    return normalize(batch.adv_c, center_only=True) * steps_per_episode.reshape(-1, 1, 1)


def normalize(x: Tensor, center_only: bool = False, eps: float = 1e-8) -> Tensor:
    """Per-task standardization over ``[N, T, E]`` (or centering only)."""
    mean = x.mean(dim=(1, 2), keepdim=True)
    if center_only:
        return x - mean
    return (x - mean) / (x.std(dim=(1, 2), keepdim=True) + eps)
