"""The PPO family of inner solvers (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"),
batched over tasks; ``ppo`` itself is the unconstrained member (``ppolag.py`` and ``pidlag.py`` add a multiplier).

One inner step, for all N tasks at once (``MinibatchSolver.step``, the loop ``p3o`` and ``focops`` share):
- ``before_step(batch, state)``: a subclass's multiplier update (PPO-Lagrangian's dual ascent, the PID
  controller), done before the policy update as in OmniSafe;
- A = ``advantages(batch, state)`` (``ppo``: A_R standardized per task), held fixed during the step;
- ``epochs`` passes over the task's T x E samples in minibatches of ``minibatch_size`` samples per task (each
  task draws its own permutation per pass from a generator seeded by its own batch, so a task's step depends
  on its own batch and parameters only, whoever computes it and whatever the other tasks hold); every
  minibatch is one **Adam** step (Kingma & Ba 2015; betas 0.9 / 0.999, eps 1e-8) ascending PPO's clipped
  surrogate (eq. 7)

      L^CLIP(theta) = E[ min(r_t(theta) A_t, clip(r_t(theta), 1 - eps, 1 + eps) A_t) ],
      r_t(theta) = pi_theta(a_t|s_t) / pi_old(a_t|s_t),

  with the per-task gradient clipped to norm ``max_grad_norm`` (OmniSafe's 40) before Adam. The parameters
  are the stacked ``[N, ...]`` tensors and Adam runs elementwise on them (one independent optimizer per
  task); its moments start at zero in every inner step (no optimizer state persists across steps);
- early stop (OmniSafe's ``kl_early_stop``): after each pass, a task whose mean KL(pi_old || pi_theta) on its
  whole batch exceeds ``target_kl`` stops there (keeps that pass's parameters); the others continue;
- ``max_minibatches`` (0: none) caps the Adam steps per inner step, for very large batches.

Defaults follow OmniSafe's PPO / PPOLag / CPPOPID (``configs/on-policy``): lr 3e-4, clip 0.2, target_kl 0.02,
minibatch 64, max_grad_norm 40, no entropy bonus; its 40 passes (``update_iters``) are 10 here: the KL early
stop ends most steps within a few passes anyway, and an inner step of meta-RL is one of few (K = 1..10).

The solver's ``surrogate`` (and so ``objective``, what first-order outer updaters differentiate) stays the
unclipped E[r A] of `InnerSolver`: it has L^CLIP's value and gradient at theta_old. The step has no
differentiable form (``supports_differentiable = False``): Meta-CPO's and Meta-TRPO's outer updaters refuse it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import InnerSolver, State, normalize
from safemeta.config.schema import spec
from safemeta.registry import register_inner
from safemeta.rollout.batch import Batch
from safemeta.rollout.params import Params, detach, flat, unflat
from safemeta.rollout.policy import gaussian_log_prob

SHUFFLE_SEED = 20261222  # base of each task's minibatch generator (plus a number read off its own batch)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class PPOConfig:
    lr: float = spec(3e-4, gt=0, doc="Adam learning rate of the minibatch steps (OmniSafe's actor lr)")
    epochs: int = spec(10, ge=1, doc="passes over the task's samples per inner step (OmniSafe's update_iters is 40; "
                                     "the KL early stop usually ends the step sooner)")
    minibatch_size: int = spec(64, ge=0, doc="samples per task in one Adam step (0: the whole batch; OmniSafe's 64)")
    max_minibatches: int = spec(0, ge=0, doc="at most this many Adam steps per inner step (0: epochs x minibatches)")
    clip: float = spec(0.2, gt=0, lt=1, doc="eps of the clipped surrogate, r clipped to [1 - eps, 1 + eps] (eq. 7)")
    target_kl: float = spec(0.02, ge=0, doc="a task stops after the pass that takes its mean KL(pi_old || pi) on the "
                                            "batch above this (0: no early stop)")
    max_grad_norm: float = spec(40.0, ge=0, doc="per-task gradient norm clip before each Adam step (0: none)")


def clipped_surrogate(logp: Tensor, logp_old: Tensor, adv: Tensor, clip: float) -> Tensor:
    """Per sample min(r A, clip(r, 1 - eps, 1 + eps) A), r = exp(logp - logp_old) (PPO eq. 7, before the mean).

    Its gradient w.r.t. ``logp`` is r A inside the clip range and 0 where the clip binds (A > 0 and r > 1 + eps,
    or A < 0 and r < 1 - eps); outside the range on the other side the unclipped term is the minimum and keeps
    its gradient."""
    ratio = torch.exp(logp - logp_old)
    return torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)


def task_seed(batch: Batch, i: int) -> int:
    """The seed of task ``i``'s minibatch permutations, read off its own rewards (as the critics' fits do)."""
    return SHUFFLE_SEED + int(batch.rew[i].detach().abs().sum().double().mul(1000).remainder(2**31))


class MinibatchSolver(InnerSolver):
    """The minibatch machinery every PPO-style solver shares: per-task permutations, minibatch Adam on the
    ``[N, P]`` stack, the per-task KL early stop and ``max_minibatches`` (module docstring), ascending a per-task
    objective on each minibatch.

    A subclass gives ``sample_terms(batch, state)`` (per-sample tensors ``[N, T, E, ...]``, held fixed during the
    step), ``minibatch_objective(logp, mean, log_std, mb, state)`` (the per-task ``[N]`` objective to ascend on a
    minibatch; ``mb`` holds the terms, ``logp_old``, ``old_mean`` and ``old_log_std`` of its samples, ``[N, B, ...]``)
    and optionally ``before_step`` (a multiplier update before the policy step, as OmniSafe's) and
    ``early_stop_kl`` (the threshold on the batch's mean KL(pi_old || pi); 0: none). ``gain_key`` names the
    objective's gain over the step in the step's info."""

    supports_differentiable = False
    gain_key = "objective_gain"

    def before_step(self, batch: Batch, state: State) -> State:
        return state

    def sample_terms(self, batch: Batch, state: State) -> dict[str, Tensor]:
        raise NotImplementedError

    def minibatch_objective(self, logp: Tensor, mean: Tensor, log_std: Tensor, mb: dict[str, Tensor],
                            state: State) -> Tensor:
        raise NotImplementedError

    @property
    def early_stop_kl(self) -> float:
        return float(self.cfg.target_kl)

    def step(self, params: Params, batch: Batch, state: State, differentiable: bool = False
             ) -> tuple[Params, State, dict[str, Tensor]]:
        if differentiable:
            raise NotImplementedError(f"{type(self).__name__} has no differentiable step")
        state = self.before_step(batch, state)
        new, info = self.minibatch_update(params, batch, state)
        return new, state, {**info, **{k: v for k, v in state.items() if k != "cost_limit"}}

    def minibatch_plan(self, batch: Batch) -> tuple[int, int, list[torch.Generator]]:
        n, t, e = batch.logp.shape
        samples = t * e
        size = self.cfg.minibatch_size if 0 < self.cfg.minibatch_size < samples else samples
        return samples, size, [torch.Generator().manual_seed(task_seed(batch, i)) for i in range(n)]

    def whole_batch_terms(self, params: Params, batch: Batch, state: State) -> dict[str, Tensor]:
        """The terms of every sample, flattened to ``[N, S, ...]``, with the old policy's log-prob, mean, log-std."""
        n = batch.logp.shape[0]
        samples = batch.logp[0].numel()
        obs = batch.obs.reshape(n, samples, -1)
        with torch.no_grad():
            old_mean, old_log_std = self.actor_fn(detach(params), obs)
        terms = {k: v.detach().reshape(n, samples, *v.shape[3:]) for k, v in self.sample_terms(batch, state).items()}
        return {**terms, "obs": obs, "act": batch.act.reshape(n, samples, -1),
                "logp_old": batch.logp.reshape(n, samples).detach(), "old_mean": old_mean.detach(),
                "old_log_std": old_log_std.expand_as(old_mean).detach()}

    def evaluate(self, x: Tensor, like: Params, mb: dict[str, Tensor], state: State) -> Tensor:
        """The per-task objective at flat parameters ``x`` on the samples ``mb``."""
        mean, log_std = self.actor_fn(unflat(x, like), mb["obs"])
        log_std = log_std.expand_as(mean)
        return self.minibatch_objective(gaussian_log_prob(mb["act"], mean, log_std), mean, log_std, mb, state)

    def minibatch_update(self, params: Params, batch: Batch, state: State) -> tuple[Params, dict[str, Tensor]]:
        """``epochs`` passes of per-task minibatch Adam up ``minibatch_objective`` with the KL early stop."""
        cfg = self.cfg
        n = batch.logp.shape[0]
        samples, size, gens = self.minibatch_plan(batch)
        old = detach(params)
        terms = self.whole_batch_terms(old, batch, state)
        old_dist = (terms["old_mean"], terms["old_log_std"])  # pi_old on the whole batch, for the KLs below
        device = batch.logp.device
        rows = torch.arange(n, device=device).unsqueeze(1)
        x = flat(old).clone()  # [N, P]: Adam runs on the flat stack, one optimizer per row
        m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
        active = torch.ones(n, dtype=torch.bool, device=device)
        epochs_run = torch.zeros(n, device=device)
        steps, cap, limit = 0, cfg.max_minibatches, self.early_stop_kl
        with torch.enable_grad():
            for _ in range(cfg.epochs):
                if size < samples:
                    perm = torch.stack([torch.randperm(samples, generator=g, device=g.device) for g in gens]).to(device)
                else:
                    perm = torch.arange(samples, device=device).expand(n, samples)
                # one gather per pass; the minibatches are then contiguous slices of it
                shuffled = {k: v[rows, perm] for k, v in terms.items()}
                for start in range(0, samples, size):
                    if cap and steps >= cap:
                        break
                    mb = {k: v[:, start:start + size] for k, v in shuffled.items()}
                    leaf = x.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(self.evaluate(leaf, old, mb, state).sum(), leaf)
                    steps += 1
                    x = adam_ascent(x, grad, m1, m2, steps, cfg.lr, active, cfg.max_grad_norm)
                epochs_run += active.float()
                if limit > 0:
                    with torch.no_grad():
                        active = active & (self.mean_kl(None, unflat(x, old), batch, old_dist=old_dist) <= limit)
                if not bool(active.any()) or (cap and steps >= cap):
                    break
        p = unflat(x, old)
        with torch.no_grad():
            gain = self.evaluate(x, old, terms, state) - self.evaluate(flat(old), old, terms, state)
            kl = self.mean_kl(None, p, batch, old_dist=old_dist)
        info = {"kl": kl, self.gain_key: gain, "epochs": epochs_run,
                "early_stopped": (~active).float() if limit > 0 else torch.zeros(n, device=device)}
        return p, {**info, **self.step_info(p, batch, terms)}

    def step_info(self, new: Params, batch: Batch, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Extra per-task diagnostics of the step (none here)."""
        return {}


class PPOSolver(MinibatchSolver):
    """The PPO update: L^CLIP on ``self.advantages`` (held fixed during the step); subclasses change the advantage
    and the state (``before_step``)."""

    gain_key = "surrogate_gain"

    def sample_terms(self, batch: Batch, state: State) -> dict[str, Tensor]:
        return {"adv": self.advantages(batch, state)}

    def minibatch_objective(self, logp, mean, log_std, mb, state) -> Tensor:
        return clipped_surrogate(logp, mb["logp_old"], mb["adv"], self.cfg.clip).mean(1)

    def step_info(self, new: Params, batch: Batch, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.no_grad():
            ratio = torch.exp(self.log_prob(new, batch) - batch.logp)
        return {"clip_fraction": ((ratio - 1).abs() > self.cfg.clip).float().mean(dim=(1, 2))}


def adam_ascent(x: Tensor, grad: Tensor, m1: Tensor, m2: Tensor, t: int, lr: float, active: Tensor,
                max_grad_norm: float) -> Tensor:
    """One Adam step *up* ``grad`` on flat stacked parameters ``x`` ``[N, P]``, one optimizer per row (task): the
    row's gradient clipped to norm ``max_grad_norm`` (0: not), moments ``m1`` / ``m2`` updated in place, rows where
    ``active`` is False left as they are. ``t`` is the step count (bias correction) of the active rows."""
    if max_grad_norm > 0:
        grad = grad * (max_grad_norm / (grad.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
    b1, b2 = ADAM_BETAS
    m1.mul_(b1).add_(grad, alpha=1 - b1)
    m2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    step = (lr / (1 - b1 ** t)) * m1 / ((m2 / (1 - b2 ** t)).sqrt_().add_(ADAM_EPS))
    return x.detach() + active.unsqueeze(1).to(x.dtype) * step


@register_inner("ppo", "PPO: clipped surrogate, minibatch Adam epochs with a KL early stop (unconstrained)")
class PPO(PPOSolver):
    Config = PPOConfig

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return normalize(batch.adv_r)
