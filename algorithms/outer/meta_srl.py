"""``online_dualdice`` for neural policies: Meta-SRL (Khattar et al., arXiv 2405.16601) in the trainer.

One meta-iteration is one task of the online sequence (preset ``meta_srl``: ``trainer.tasks_per_iter: 1``).
CRPO runs K = M steps from theta = phi_t with the per-task step size alpha_t (``inner_overrides`` sets
``state["step_size"]``, hence ``needs_step_size``); then, with pi_hat_t the policy CRPO *hands out*
(`handed_out`: its output rule, ``inner_cfg.crpo.output``, by default the latest iterate whose own batch
estimated its cost within d + eta, as CRPO's Algorithm 1 outputs from N_0; issue 18, item 7):

* distance term (the tabular learner's D_hat_t, `safemeta.algorithms.meta_srl.tabular_learner`):
  D_hat_t(phi) = E_{s ~ d_hat_t} KL(pi_hat_t(.|s) || pi_phi(.|s)), with d_hat_t the discounted state
  visitation of pi_hat_t;
* phi, ``phi_update: ftl`` (default; issue 18, item 9): follow the leader, as the tabular learner does:
  phi_{t+1} approximately minimizes L_t(phi) = sum_{tau <= t} w_tau D_hat_tau(phi) / sum_tau w_tau (w_tau = 1
  under ``regret: static``, forget^(t - tau) under ``dynamic``), each D_hat_tau on ``target_states``
  states resampled from task tau's data in proportion to d_hat_tau, by Adam distillation (`distill_mixture`)
  warm-started at phi_t and run to convergence: at most ``distill_iters`` steps at the constant rate
  ``lr_phi``, stopped once 50 steps lower L_t by less than the fraction ``distill_tol``. How far it stopped
  from the leader is logged: ``meta_srl/leader_grad_norm`` (|grad L_t| at phi_{t+1}) and
  ``meta_srl/leader_gap`` (how much ``leader_check_iters`` further Adam steps on a copy still lower L_t).
  ``phi_update: ogd`` is the update before issue 18 (``distill_iters`` Adam steps at lr_phi / sqrt(t)
  toward pi_hat_t alone: an inexact OGD step on D_hat_t);
* alpha: FTL (or OGD on log alpha) on U_t(alpha) = (D_hat_t(phi_t) + eps_t^2) / alpha + alpha G_t^2, where
  G_t^2 = sum_k g_k^T F_k^-1 g_k is the natural-gradient form of the local norm: CRPO's step k is
  x_k = alpha F^-1 g_k, so g^T F^-1 g = 2 KL_k / alpha^2 from the step's quadratic KL (its ``kl`` and
  ``step_scale`` diagnostics); ``dynamic`` discounts past tasks by ``forget``. eps_t = ``eps`` +
  |E_D[w] - 1|, DualDICE's consistency residual (0 with ``visitation: on_policy``). The tabular learner's
  suboptimality term (KL from pi_hat_t to its per-state mode, the form of the LP optimum) has no Gaussian
  counterpart: the KL from any Gaussian to a deterministic optimum is infinite. Extrapolating the
  iterates' KL steps geometrically, the alternative that works for any policy class, underestimated
  D*_t - D_hat_t about tenfold on tabular-gridworld, where the exact optimum shows it, so it is not used.

Visitation (``visitation``): ``dualdice`` (default, the paper's way) estimates w = d^{pi_hat_t} / d^D on the
transitions of the M steps (pi_0 .. pi_{M-1}; the data distribution D) with `safemeta.rollout.dualdice.feature_dualdice`
on random Fourier features of the standardized (state, action) vector (bandwidth: the median distance
between data points times ``rff_bandwidth``; E_{a' ~ pi_hat} phi(s', a') from ``action_samples`` sampled
actions); the distance term and the distillation then weight the data states by max(w, 0).
``on_policy`` instead uses the rollout of the handed-out iterate itself (on-policy data, each sample
weighted by gamma^(its step in the episode): an unbiased estimate of d^{pi_hat_t} that needs no ratio
estimator). The tasks' critics start from the critics' initialization that the trainer carries across
iterations for every method (`safemeta.training.model.fit_meta_critics`).

The leader's pieces (`PolicyTarget`, `policy_target`, `mixture_distance`, `distill_mixture`) are shared
with the ``averaging`` learner of the continuous online protocol (`safemeta.online.continuous`), which
minimizes the same objective with uniform state weights.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from safemeta.training.adaptation import AdaptationResult
from safemeta.algorithms.meta_srl.tabular_learner import StepSizeLearning, next_step_size, step_size_bound, task_weights
from safemeta.algorithms.outer.base import OuterContext, OuterUpdater
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.rollout.dualdice import RandomFourierFeatures, feature_dualdice
from safemeta.rollout.params import detach, stack
from safemeta.rollout.policy import gaussian_kl
from safemeta.registry import register_outer
from safemeta.rollout.task import Task


@dataclass
class NeuralOnlineDualDICEConfig(StepSizeLearning):
    phi_update: Literal["ftl", "ogd"] = spec("ftl", doc="ftl: distil phi to convergence toward every past task's "
                                                        "handed-out policy (the leader); ogd: distill_iters Adam "
                                                        "steps toward the last one at lr_phi / sqrt(t)")
    lr_phi: float = spec(0.01, gt=0, doc="Adam step size of the distillation")
    distill_iters: int = spec(500, ge=1, doc="Adam steps per task: ftl's most (it stops once converged), ogd's all")
    distill_tol: float = spec(1e-3, ge=0, doc="ftl stops when 50 Adam steps lower the leader's lowest loss by less "
                                              "than this fraction of it")
    leader_check_iters: int = spec(100, ge=0, doc="Adam steps on a copy after ftl stops, to log how far it stopped "
                                                  "from the leader (meta_srl/leader_gap); 0: off")
    target_states: int = spec(256, ge=1, doc="states kept per task for the leader (resampled by visitation)")
    leader_states: int = spec(8192, ge=1, doc="states in the leader's loss (a weighted resample when the kept "
                                              "states of all past tasks are more)")
    alpha_min: float = spec(1e-3, gt=0)
    alpha_max: float = spec(10.0, gt=0)
    visitation: Literal["dualdice", "on_policy"] = "dualdice"
    rff_features: int = spec(256, ge=8, doc="random Fourier features of (s, a) for DualDICE")
    rff_bandwidth: float = spec(1.0, gt=0, doc="multiplies the median-distance bandwidth")
    action_samples: int = spec(4, ge=1, doc="actions sampled from pi_hat per next / initial state")


def episode_starts(batch: Batch) -> Tensor:
    """``[N, T, E]`` bool: the samples that begin an episode (t = 0 or right after a done)."""
    done = batch.terminated | batch.truncated
    start = torch.zeros_like(done)
    start[:, 0] = True
    start[:, 1:] = done[:, :-1]
    return start


def discounted_visitation(batch: Batch, gamma: float) -> Tensor:
    """Weights ``[N, T, E]`` summing to one per task: gamma^(step within the episode), normalized."""
    start = episode_starts(batch)
    step = torch.zeros_like(batch.rew)
    for i in range(1, step.shape[1]):
        step[:, i] = torch.where(start[:, i], 0.0, step[:, i - 1] + 1)
    w = gamma ** step
    return w / w.sum(dim=(1, 2), keepdim=True)


def concat_time(batches: list[Batch]) -> Batch:
    """The batches of several steps as one (stacked along time), each batch's last step marked as an
    episode boundary (the rollout was cut there); only the fields DualDICE reads."""
    cat = lambda name: torch.cat([getattr(b, name) for b in batches], dim=1)  # noqa: E731
    cut = []
    for b in batches:
        t = b.truncated.clone()
        t[:, -1] = ~b.terminated[:, -1]
        cut.append(t)
    first = batches[0]
    return Batch(obs=cat("obs"), act=cat("act"), logp=cat("logp"), rew=cat("rew"), cost=cat("cost"),
                 terminated=cat("terminated"), truncated=torch.cat(cut, dim=1), next_obs=cat("next_obs"),
                 ep_return=first.ep_return, ep_cost=first.ep_cost, ep_count=first.ep_count)


def handed_out(inner, result: AdaptationResult) -> tuple[dict, Tensor]:
    """The policy CRPO hands out per task (``inner.output``) and its index k ``[N]`` into ``result.params``:
    with ``output: feasible`` the latest k whose batch has ``ep_constraint_cost <= d + tolerance``
    (`latest_within_limit`), K where none has; with ``last``, K."""
    k_last = len(result.params) - 1
    n = next(iter(result.params[-1].values())).shape[0]
    idx = torch.full((n,), k_last, dtype=torch.long, device=result.state["cost_limit"].device)
    if inner.output_rule != "last":
        limit = result.state["cost_limit"] + inner.tolerance
        for k, batch in zip(range(k_last + 1), result.batches):
            idx = torch.where(batch.ep_constraint_cost <= limit, k, idx)
    params = {name: torch.stack([result.params[int(idx[i])][name][i] for i in range(n)])
              for name in result.params[-1]}
    return params, idx


# ---------------------------------------------------------------------------------------- the leader of phi

@dataclass
class PolicyTarget:
    """pi_hat_tau on its kept states S_tau: ``states [S, obs_dim]``, its ``mean`` and ``log_std`` ``[S, act_dim]``
    (S_tau drawn from d_hat_tau, so the states count equally)."""
    states: Tensor
    mean: Tensor
    log_std: Tensor


def policy_target(actor_fn, pi_hat: dict, states: Tensor, keep: int, gen: torch.Generator,
                  weights: Tensor | None = None) -> PolicyTarget:
    """pi_hat (stacked for one task) on ``keep`` of ``states [..., obs_dim]``: a uniform subsample (at most
    ``keep``, without replacement), or, given ``weights`` (same leading shape, >= 0), ``keep`` draws in
    proportion to them (with replacement): an unbiased sample of the weighted state distribution."""
    flat_states = states.reshape(-1, states.shape[-1])
    if weights is None:
        idx = torch.randperm(len(flat_states), generator=gen, device=gen.device)[:keep]
    else:
        w = weights.reshape(-1).double().clamp(min=0.0)
        w = w if float(w.sum()) > 0 else torch.ones_like(w)
        idx = torch.multinomial(w.to(gen.device), keep, replacement=True, generator=gen)  # on the generator's device
    kept = flat_states[idx.to(flat_states.device)]
    with torch.no_grad():
        mean, log_std = actor_fn({k: v.detach() for k, v in pi_hat.items()}, kept.unsqueeze(0))
    return PolicyTarget(kept, mean[0], log_std[0])


@dataclass
class _Pooled:
    states: Tensor
    mean: Tensor
    log_std: Tensor
    weights: Tensor  # per state, summing to one


def _pool(targets: list[PolicyTarget], task_weights: Tensor | None, max_states: int | None,
          gen: torch.Generator | None) -> _Pooled:
    """All targets' states with weights w_tau / (|S_tau| sum w); more than ``max_states``: a weighted resample."""
    device = targets[0].states.device
    tw = torch.ones(len(targets), device=device) if task_weights is None else \
        torch.as_tensor(task_weights, dtype=torch.float32, device=device)
    tw = tw / tw.sum()
    weights = torch.cat([torch.full((len(g.states),), float(w) / len(g.states), device=device)
                         for g, w in zip(targets, tw)])
    pooled = _Pooled(torch.cat([g.states for g in targets]), torch.cat([g.mean for g in targets]),
                     torch.cat([g.log_std for g in targets]), weights)
    if max_states is not None and len(weights) > max_states:
        idx = torch.multinomial(weights.double().cpu(), max_states, replacement=True,  # a CPU generator's draw
                                generator=gen if gen is not None else torch.Generator().manual_seed(0)).to(device)
        pooled = _Pooled(pooled.states[idx], pooled.mean[idx], pooled.log_std[idx],
                         torch.full((max_states,), 1.0 / max_states, device=device))
    return pooled


def _pooled_distance(actor_fn, theta: dict, pooled: _Pooled) -> Tensor:
    from safemeta.rollout.params import stack as stack_params

    mean, log_std = actor_fn(stack_params(theta, 1), pooled.states.unsqueeze(0))
    return (gaussian_kl(pooled.mean, pooled.log_std, mean[0], log_std[0]) * pooled.weights).sum()


def mixture_distance(actor_fn, theta: dict, targets: list[PolicyTarget], task_weights: Tensor | None = None
                     ) -> Tensor:
    """L(theta) = sum_tau w_tau E_{s ~ S_tau} KL(pi_hat_tau(.|s) || pi_theta(.|s)) / sum_tau w_tau (w = 1 by
    default), ``theta`` unstacked."""
    return _pooled_distance(actor_fn, theta, _pool(targets, task_weights, None, None))


@dataclass
class Distilled:
    theta: dict  # the new (unstacked) theta
    before: float  # L at the start
    after: float  # L at theta
    steps: int  # Adam steps taken
    grad_norm: float  # |grad L(theta)|
    leader_gap: float = float("nan")  # L(theta) - the lowest L of ``check_iters`` further steps (nan: not run)


def distill_mixture(actor_fn, theta: dict, targets: list[PolicyTarget], iters: int, lr: float,
                    task_weights: Tensor | None = None, tol: float = 0.0, check_iters: int = 0,
                    max_states: int | None = None, gen: torch.Generator | None = None) -> Distilled:
    """Adam (rate ``lr``) on `mixture_distance` from ``theta``: ``iters`` steps, or fewer with ``tol`` > 0 (stop
    when the lowest L so far is less than ``tol`` (relative) below the lowest L of 50 steps earlier; Adam's
    first steps may raise L, so a single window's rise does not stop it). ``check_iters`` > 0 then runs that
    many more steps on a copy (optimizer state included) and reports how much lower they got L
    (``leader_gap``): the distance to the minimizer in loss that stopping left. ``max_states``: L on a
    weighted resample of that many states."""
    pooled = _pool(targets, task_weights, max_states, gen)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=lr)
    loss_fn = lambda p: _pooled_distance(actor_fn, p, pooled)  # noqa: E731
    with torch.no_grad():
        before = float(loss_fn(leaves))
    best, best_at, steps = [before], {0: before}, 0  # lowest L so far; at every 10th step
    for steps in range(1, iters + 1):
        opt.zero_grad()
        loss = loss_fn(leaves)
        loss.backward()
        opt.step()
        best[0] = min(best[0], float(loss.detach()))
        if tol > 0 and steps % 10 == 0:
            best_at[steps] = best[0]
            if steps >= 50 and best_at[steps - 50] - best[0] < tol * max(abs(best[0]), 1e-12):
                break
    opt.zero_grad()
    loss = loss_fn(leaves)
    loss.backward()
    grad_norm = float(torch.sqrt(sum((v.grad.detach() ** 2).sum() for v in leaves.values())))
    after = float(loss.detach())
    out = {k: v.detach().clone() for k, v in leaves.items()}
    gap = float("nan")
    if check_iters > 0:
        state = copy.deepcopy(opt.state_dict())
        probe = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
        probe_opt = torch.optim.Adam(list(probe.values()), lr=lr)
        probe_opt.load_state_dict(state)
        best = after
        for _ in range(check_iters):
            probe_opt.zero_grad()
            loss = loss_fn(probe)
            loss.backward()
            probe_opt.step()
            best = min(best, float(loss.detach()))
        with torch.no_grad():
            best = min(best, float(loss_fn(probe)))
        gap = after - best
    return Distilled(out, before, after, steps, grad_norm, gap)


@register_outer("online_dualdice", "Meta-SRL: CRPO's init and step size by online learning on estimated bounds")
class NeuralOnlineDualDICE(OuterUpdater):
    Config = NeuralOnlineDualDICEConfig
    needs_step_size = True
    needs_post_rollout = True

    def __init__(self, cfg: NeuralOnlineDualDICEConfig, ctx: OuterContext):
        super().__init__(cfg, ctx)
        self.alpha = float(ctx.inner.cfg.step_size)
        self.opt = torch.optim.Adam(list(ctx.meta.theta.values()), lr=cfg.lr_phi)  # phi_update: ogd
        self.history: dict[str, list[float]] = {"D": [], "g2": [], "eps": []}
        self.targets: list[PolicyTarget] = []  # phi_update: ftl, one per past task
        self.t = 0

    def inner_overrides(self, tasks: list[Task]) -> dict[str, Tensor]:
        return {"step_size": torch.full((len(tasks),), self.alpha, device=self.ctx.inner.device)}

    def weighted_kl(self, target: dict, params: dict, batch: Batch, weights: Tensor) -> Tensor:
        """sum over samples of w * KL(pi_target(.|s) || pi_params(.|s)), per task ``[N]``."""
        n, t, e = weights.shape
        obs = batch.obs.reshape(n, t * e, -1)
        with torch.no_grad():
            m0, s0 = self.ctx.inner.actor_fn(target, obs)
        m1, s1 = self.ctx.inner.actor_fn(params, obs)
        return (gaussian_kl(m0, s0, m1, s1) * weights.reshape(n, t * e)).sum(-1)

    def dualdice_weights(self, pi_hat: dict, data: Batch, gamma: float) -> tuple[Tensor, float]:
        """Per-sample max(w, 0) / sum, w = d^{pi_hat} / d^D by feature DualDICE on ``data`` (one task per row)."""
        cfg = self.cfg
        out, means = torch.zeros_like(data.rew), []
        for i in range(data.n_tasks):
            obs, act, nxt = data.obs[i].flatten(0, 1), data.act[i].flatten(0, 1), data.next_obs[i].flatten(0, 1)
            obs0 = data.obs[i][episode_starts(data)[i]]
            x = torch.cat([obs, act], -1)
            mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
            pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0), device="cpu")[:512]
            sub = (x[pick.to(x.device)] - mu) / sd
            bandwidth = float(torch.cdist(sub, sub).median().clamp(min=1e-3)) * cfg.rff_bandwidth
            rff = RandomFourierFeatures(x.shape[-1], cfg.rff_features, bandwidth, seed=self.t)
            feat = lambda o, a: rff((torch.cat([o, a], -1) - mu) / sd)  # noqa: E731

            def expected(states: Tensor) -> Tensor:
                with torch.no_grad():
                    mean, log_std = self.ctx.inner.actor_fn({k: v[i:i + 1] for k, v in pi_hat.items()},
                                                            states.unsqueeze(0))
                samples = [feat(states, (mean + log_std.exp() * torch.randn_like(mean))[0])
                           for _ in range(cfg.action_samples)]
                return torch.stack(samples).mean(0)

            w, mean_w = feature_dualdice(feat(obs, act), expected(nxt), expected(obs0), gamma)
            w = w.clamp(min=0.0).float()
            out[i] = (w / w.sum().clamp(min=1e-12)).reshape(data.rew.shape[1:])
            means.append(mean_w)
        return out, float(np.mean(means))

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        cfg, meta = self.cfg, self.ctx.meta
        self.t += 1
        alpha = self.alpha
        gamma = self.ctx.cfg.critic.gamma
        pi_hat, out_idx = handed_out(self.ctx.inner, result)
        pi_hat = detach(pi_hat)
        if cfg.visitation == "on_policy":  # the handed-out iterate's own rollout, per task
            own = [result.batches[min(int(k), len(result.batches) - 1)] for k in out_idx]
            final = Batch(**{f: torch.stack([getattr(b, f)[i] for i, b in enumerate(own)])
                             for f in ("obs", "act", "logp", "rew", "cost", "terminated", "truncated", "next_obs",
                                       "ep_return", "ep_cost", "ep_count")})
            weights = discounted_visitation(final, gamma)
            mean_w = 1.0
        else:
            final = concat_time(result.batches[:len(result.params) - 1])
            weights, mean_w = self.dualdice_weights(pi_hat, final, gamma)
        phi_t = stack({k: v.detach() for k, v in meta.theta.items()}, len(tasks))
        distance = float(self.weighted_kl(pi_hat, phi_t, final, weights).mean())
        g2 = sum(float((2 * info["kl"] / (alpha**2 * info["step_scale"].clamp(min=1e-6) ** 2)).mean())
                 for info in result.infos)
        eps = cfg.eps + abs(mean_w - 1.0)
        self.history["D"].append(distance)
        self.history["g2"].append(g2)
        self.history["eps"].append(eps)
        leader: dict[str, float] = {}
        if cfg.phi_update == "ftl":
            gen = torch.Generator().manual_seed(self.ctx.cfg.seed * 1_000_003 + self.t)
            for i in range(len(tasks)):
                self.targets.append(policy_target(self.ctx.inner.actor_fn, {k: v[i:i + 1] for k, v in pi_hat.items()},
                                                  final.obs[i], cfg.target_states, gen, weights[i]))
            theta = {k: v.detach() for k, v in meta.theta.items()}
            res = distill_mixture(self.ctx.inner.actor_fn, theta, self.targets, cfg.distill_iters, cfg.lr_phi,
                                  task_weights=torch.as_tensor(task_weights(cfg, len(self.targets)), dtype=torch.float32,
                                                               device=self.ctx.inner.device),
                                  tol=cfg.distill_tol, check_iters=cfg.leader_check_iters,
                                  max_states=cfg.leader_states, gen=gen)
            with torch.no_grad():
                for k, v in meta.theta.items():
                    v.copy_(res.theta[k])
            leader = {"meta_srl/leader_before": res.before, "meta_srl/leader_after": res.after,
                      "meta_srl/leader_grad_norm": res.grad_norm, "meta_srl/leader_gap": res.leader_gap,
                      "meta_srl/distill_steps": float(res.steps)}
        else:  # ogd: an inexact OGD step on D_hat_t, toward pi_hat_t alone
            lr = cfg.lr_phi / (math.sqrt(self.t) if cfg.regret == "static" else 1.0)
            for group in self.opt.param_groups:
                group["lr"] = lr
            for _ in range(cfg.distill_iters):
                self.opt.zero_grad()
                theta = stack(meta.theta, len(tasks))
                self.weighted_kl(pi_hat, theta, final, weights).sum().backward()
                self.opt.step()
        # alpha
        h = self.history
        self.alpha = float(np.clip(next_step_size(cfg, alpha, h["D"], h["eps"], h["g2"]), cfg.alpha_min, cfg.alpha_max))
        after = float(self.weighted_kl(pi_hat, stack({k: v.detach() for k, v in meta.theta.items()}, len(tasks)),
                                       final, weights).mean())
        return {"meta_srl/mean_weight": mean_w, "meta_srl/distance": distance, "meta_srl/distance_after": after,
                "meta_srl/G": math.sqrt(g2), "meta_srl/eps": eps,
                "meta_srl/bound": float(step_size_bound(alpha, distance, eps, g2)),
                "meta_srl/alpha": alpha, "meta_srl/alpha_next": self.alpha,
                "meta_srl/out_index": float(out_idx.float().mean()), **leader}

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "opt": self.opt.state_dict(), "history": self.history, "t": self.t,
                "targets": [(g.states, g.mean, g.log_std) for g in self.targets]}

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.history, self.t = state["alpha"], state["history"], state["t"]
        self.opt.load_state_dict(state["opt"])
        device = self.ctx.inner.device  # checkpoints load on the CPU
        self.targets = [PolicyTarget(*(x.to(device) if isinstance(x, torch.Tensor) else x for x in g))
                        for g in state.get("targets", [])]
