"""``online_dualdice``: Meta-SRL's meta-learner (Khattar, Ding, Sel, Lavaei, Jin; arXiv 2405.16601) for the
tabular online protocol: inexact online learning of CRPO's initialization phi and step size alpha on
upper bounds of the within-task optimality gap and constraint violation, estimated with DualDICE.

Which bound
-----------
For softmax CRPO (`tabular_crpo`) every step is, state by state, an exponentiated-gradient (mirror-
descent) step of size eta = alpha / (1 - gamma) on the gain Q_k(s, .) (or -Q_c). Its regret against any
pi, in the local-norm (variance) form of exponentiated gradient, is KL(pi || pi_0) / eta + eta sum_k
Var_{a ~ pi_k}[Q_k(s, a)]; the performance-difference lemma turns it into policy gaps (the NPG analysis
of Agarwal et al. 2021, Thm 16, which CRPO's Thm 1 reuses for the reward and the cost steps):

    sum_{k < M} (J(pi*_t) - J(pi_k)) <= U_t(alpha) = D_t / alpha + alpha G_t^2,
        D_t   = E_{s ~ d*_t} KL(pi*_t(.|s) || pi_phi(.|s)),
        G_t^2 = sum_k E_{s ~ d*_t} Var_{a ~ pi_k(.|s)}[Q_k(s, a)] / (1 - gamma)^2,

for the reward steps, and the same form bounds the cost overshoot of the cost steps; so the average
optimality gap and constraint violation over the task's M iterates are at most U_t(alpha) / M.

Summed over the steps, with N_0 the reward-step iterates (CRPO's Algorithm 1) and every cost step's
J_c(pi_k) - J_c(pi*) > eta >= 0 dropped, the Hoeffding form of the same telescoping is exact arithmetic
that `tests/test_meta_srl.py` checks against the LP optimum on the tabular family:

    sum_{k in N_0} (J_r(pi*_t) - J_r(pi_k)) <= D*_t(phi) / alpha + alpha G*_t^2 - eta (M - |N_0|),
        G*_t^2 = sum_{k < M} E_{s ~ d*_t} (max_a Q_k(s, a) - min_a Q_k(s, a))^2 / (8 (1 - gamma)^2),

so the expected gap of Algorithm 1's output (uniform over N_0) is at most that over |N_0|, and its
violation at most eta.

The learner never sees pi*_t, d*_t or Q_k. As Meta-SRL prescribes, it uses CRPO's handed-out policy
pi_hat_t (`tabular_crpo`, "The output") in place of pi*_t and the discounted state visitation of pi_hat_t
estimated off-policy by DualDICE (`safemeta.rollout.dualdice.tabular_dualdice`, target pi_hat_t, data: the
transitions of pi_0..pi_{M-1}) in place of d*_t, and pays for the inexactness with eps_t:

    D_hat_t(phi) = sum_s d_hat_t(s) KL(pi_hat_t(.|s) || pi_phi(.|s))              (the distance term)
    U_t(alpha)   = (D_hat_t(phi_t) + eps_t^2) / alpha + alpha G_hat_t^2             (the step-size bound)

Estimated constants: G_hat_t^2 = sum_k E_{s ~ d_hat_t} Var_{a ~ pi_k}[(theta_{k+1} - theta_k)(s, a) / alpha],
since each CRPO step moves the logits by exactly +-alpha Q_k / (1 - gamma) (the learner reads the steps
off the policies it produced, not Q). (With the worst-case constant G^2 = M ||Q||_inf^2 / (1 - gamma)^2
instead of the local norm the learned alpha is ~100x too small on tabular-gridworld.)

eps_t, the error of D_hat_t as an estimate of D*_t (issue 18, item 8). The paper splits this inexactness
into three sources (its eq. 4, as its reviewers summarize it; the stored copy of arXiv 2405.16601 holds
only the abstract): DualDICE's error in d_hat, the mismatch between the visitation of pi_hat_t and that of
pi*_t, and the suboptimality of pi_hat_t, whose distance to the optimum its Theorem 3.1 bounds by a
function h (not given in closed form) of pi_hat_t's optimality gap and violation. Our estimate adds

    eps_t = ``eps`` + |E_D[w] - 1| + sqrt(E_{s ~ d_hat_t} KL(mode(pi_hat_t)(.|s) || pi_hat_t(.|s))),

the configured floor, DualDICE's consistency residual (E_D[w] = 1 for an exact ratio; a proxy for the
ratio error the learner can compute without the tables) and, with ``suboptimality_eps`` (default), the
suboptimality term: the KL from pi_hat_t to the nearest policy of the form the optimum is known to have.
An LP optimum of a CMDP with one constraint is deterministic in all but at most one state (a basic
solution of the occupancy LP, Altman 1999; `safemeta.rollout.tabular.solve_constrained`), so its nearest such
policy is pi_hat_t's per-state mode, and KL(mode || pi_hat) = -log max_a pi_hat(a|s). The sum runs over
the states where CRPO's steps moved the policy (`informative_states`): where every Q_k(s, .) was flat
every action is optimal, the optimum nearest to phi keeps pi_phi there, and pi_hat_t = pi_phi there too.
The term is large while a 5-step iterate is still spread out and vanishes as pi_hat_t turns
deterministic. The visitation mismatch is not estimated (that would take the task's model). Measured
against the exact distance term D*_t(phi_t) of the optimum nearest to phi_t (the LP optimum with pi_phi at
its indifferent states, `safemeta.online.protocol.nearest_optimum`; the protocol logs it as
``learner/distance_optimum``), on the 400 tasks per setting of the tabular board: D_hat_t alone is a
median 0.48 (high similarity) / 0.44 (low) of D*_t, and D_hat_t + eps_t^2 a median 1.01 / 0.98 (tested).
alpha's leader sqrt(sum (D + eps^2) / sum G^2) then ends where the same leader with the exact D*_t ends
(0.009 / 0.006 on the board, against 0.0036 / 0.0027 with DualDICE's residual alone).

The shrinkage simplex (``shrinkage`` = gamma_s): the initialization is kept in Delta_{gamma_s} = {p in the
simplex : p_a >= gamma_s / |A|}, where KL(. || pi_phi) <= log(|A| / gamma_s) is bounded and Lipschitz,
which the paper's inexact online learning needs (the error of d_hat then moves D_hat by at most
log(|A| / gamma_s) times its total-variation error). Both updates below end with the KL projection onto it
(`shrink`), q_a = max(gamma_s / |A|, c p_a) with c normalizing: for ``ftl`` this *is* the constrained leader
(argmin_{q in Delta_gamma} KL(mix || q) has the same form), for ``ogd`` it is the Bregman projection of
mirror descent.

The updates (static regret: a fixed comparator, task *similarity*)
------------------------------------------------------------------
* phi, ``phi_update: ftl``: the exact minimizer of sum_{tau <= t} D_hat_tau(phi) over Delta_{gamma_s},
  the shrunk visitation-weighted mixture pi_phi(.|s) = shrink(sum_tau d_hat_tau(s) pi_hat_tau(.|s) /
  sum_tau d_hat_tau(s)) (states no task visited keep their previous row);
  ``phi_update: ogd``: phi_{t+1} = phi_t - (lr_phi / sqrt(t)) grad D_hat_t(phi_t), with the gradient
  grad_phi D_hat_t = d_hat_t(s) (pi_phi(.|s) - pi_hat_t(.|s)) (softmax logits; tested against finite
  differences), then projected onto Delta_{gamma_s}.
* alpha, ``alpha_update: ftl``: the minimizer of sum_tau U_tau, alpha_{t+1} = sqrt(sum_tau (D_hat_tau +
  eps_tau^2) / sum_tau G_tau^2) (the closed form, tested), clipped to [alpha_min, alpha_max];
  ``alpha_update: ogd``: a gradient step on U_t in log alpha with the relative gradient
  alpha U_t'(alpha) / U_t(alpha) (scale-free: G_t^2 is ~1e6 at gamma = 0.99).

``regret: dynamic`` (a comparator that drifts: task *relatedness*): both leaders discount task tau by
``forget``^(t - tau), so the initialization and step size follow a slowly drifting sequence; the OGD
variants use a constant step instead of 1 / sqrt(t).

A note on the paper: the stored text of arXiv 2405.16601 available while this was written held only its
abstract (and reviewers' summaries of its theorems), so the forms above follow the method as issues 8 and
18 state it (distance term, U_t, FTL / OGD, static / dynamic, the output rule, eps_t, the shrinkage
simplex) and the cited analyses (CRPO, Xu et al. 2021; NPG, Agarwal et al. 2021; ARUBA, Khodak et al.
2019, whose entropic case restricts to the shrunk simplex); no equation number of the paper is claimed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from safemeta.algorithms.meta_srl.base import OnlineContext, OnlineLearner, uniform_logits
from safemeta.algorithms.meta_srl.tabular_crpo import CRPORun, log_softmax, softmax
from safemeta.config.schema import spec
from safemeta.rollout.dualdice import tabular_dualdice
from safemeta.registry import register_online


@dataclass
class StepSizeLearning:
    """The settings Meta-SRL's step-size learning shares between the tabular and the neural learner."""

    regret: Literal["static", "dynamic"] = "static"
    forget: float = spec(0.7, gt=0, lt=1, doc="dynamic regret: weight forget^(t - tau) of task tau")
    alpha_update: Literal["ftl", "ogd"] = "ftl"
    lr_alpha: float = spec(0.5, gt=0, doc="ogd step on log alpha")
    eps: float = spec(0.0, ge=0, doc="floor of eps_t, the estimation-error term of U_t")


@dataclass
class OnlineDualDICEConfig(StepSizeLearning):
    phi_update: Literal["ftl", "ogd"] = "ftl"
    lr_phi: float = spec(2.0, gt=0, doc="ogd step size on phi (divided by sqrt(t) under static regret)")
    alpha_min: float = spec(1e-6, gt=0)
    alpha_max: float = spec(1.0, gt=0)
    visitation: Literal["dualdice", "exact"] = spec("dualdice", doc="exact: the oracle d^{pi_hat} (ablation only)")
    dualdice_p: float = spec(2.0, gt=1, doc="DualDICE's f(x) = |x|^p / p (2: closed form; else L-BFGS)")
    shrinkage: float = spec(0.01, ge=0, le=1, doc="gamma_s: pi_phi is kept in {p : p_a >= gamma_s / |A|} (0: off)")
    suboptimality_eps: bool = spec(True, doc="add pi_hat's estimated distance to the optimum, sqrt(E_d_hat "
                                             "KL(mode(pi_hat) || pi_hat)), to eps_t (off: DualDICE's residual only)")


def task_weights(cfg: StepSizeLearning, n: int) -> np.ndarray:
    """Weights of tasks 1..n in the leaders: 1 (static) or forget^(n - tau) (dynamic)."""
    if cfg.regret == "static":
        return np.ones(n)
    return cfg.forget ** np.arange(n - 1, -1, -1, dtype=np.float64)


def next_step_size(cfg: StepSizeLearning, alpha: float, distances: list[float], eps: list[float],
                   g2: list[float]) -> float:
    """alpha_{t+1} from the bounds U_1..U_t (the last entry is task t's, played with ``alpha``), unclipped."""
    if cfg.alpha_update == "ftl":
        return ftl_step_size(np.array(distances), np.array(eps), np.array(g2), task_weights(cfg, len(distances)))
    d_t, e_t, g_t = distances[-1], eps[-1], g2[-1]
    rel_grad = (-(d_t + e_t**2) / alpha + alpha * g_t) / max(float(step_size_bound(alpha, d_t, e_t, g_t)), 1e-300)
    lr = cfg.lr_alpha / (np.sqrt(len(distances)) if cfg.regret == "static" else 1.0)
    return alpha * float(np.exp(-lr * rel_grad))


def distance_term(d_hat: np.ndarray, pi_hat: np.ndarray, phi: np.ndarray) -> float:
    """D_hat(phi) = sum_s d_hat(s) KL(pi_hat(.|s) || softmax(phi)(.|s))."""
    kl = (pi_hat * (np.log(np.clip(pi_hat, 1e-300, None)) - log_softmax(phi))).sum(-1)
    return float((d_hat * kl).sum())


def distance_grad(d_hat: np.ndarray, pi_hat: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """grad_phi D_hat = d_hat(s) (softmax(phi)(.|s) - pi_hat(.|s)), ``[S, A]``."""
    return d_hat[:, None] * (softmax(phi) - pi_hat)


def step_size_bound(alpha: float | np.ndarray, distance: float, eps: float, g2: float) -> float | np.ndarray:
    """U(alpha) = (D + eps^2) / alpha + alpha G^2."""
    return (distance + eps**2) / alpha + alpha * g2


def ftl_step_size(distances: np.ndarray, eps: np.ndarray, g2: np.ndarray, weights: np.ndarray) -> float:
    """argmin_alpha sum_tau w_tau U_tau(alpha) = sqrt(sum w (D + eps^2) / sum w G^2)."""
    return float(np.sqrt((weights * (distances + eps**2)).sum() / max((weights * g2).sum(), 1e-300)))


def shrink(pi: np.ndarray, gamma_s: float) -> np.ndarray:
    """Rows of ``pi`` projected onto Delta_{gamma_s} = {p : p_a >= gamma_s / A}: q_a = max(gamma_s / A, c p_a),
    c normalizing. It is both the KL projection argmin_q KL(q || p) and argmin_q KL(p || q) over the set."""
    pi = np.clip(np.asarray(pi, dtype=np.float64), 0.0, None)
    pi = pi / pi.sum(-1, keepdims=True)
    n_a = pi.shape[-1]
    if gamma_s <= 0:
        return pi
    if gamma_s >= 1:
        return np.full_like(pi, 1.0 / n_a)
    floor = gamma_s / n_a
    p_sorted = np.sort(pi, axis=-1)
    rest = np.cumsum(p_sorted[..., ::-1], axis=-1)[..., ::-1]  # sum of p_sorted[j:], [.., A]
    j = np.arange(n_a)
    c = (1.0 - j * floor) / np.maximum(rest, 1e-300)  # c if the j smallest are clamped
    ok = c * p_sorted >= floor  # the (j+1)-th smallest stays above the floor
    first = np.argmax(ok, axis=-1)  # the fewest clamped coordinates that work (one always does: gamma_s < 1)
    c_row = np.take_along_axis(c, first[..., None], -1)
    return np.maximum(floor, c_row * pi)


def informative_states(run: CRPORun, rel_tol: float = 1e-8) -> np.ndarray:
    """``[S]`` bool: the states where some CRPO step moved the policy, i.e. some Q_k(s, .) was not flat over
    the actions ((theta_{k+1} - theta_k)(s, .) = +-alpha Q_k(s, .) / (1 - gamma) up to a per-state shift).
    Where every Q_k(s, .) was flat every action was as good (the goal of tabular-gridworld: absorbing, same
    reward for every action) and the optimum does not pin the action down."""
    steps = np.stack([b - a for a, b in zip(run.path[:-1], run.path[1:])]) if len(run.path) > 1 else None
    if steps is None:
        return np.zeros(run.policy.shape[0], dtype=bool)
    spread = np.ptp(steps, axis=-1).max(0)  # [S]
    return spread > rel_tol * max(float(spread.max()), 1e-300)


def suboptimality_eps(d_hat: np.ndarray, pi_hat: np.ndarray, informative: np.ndarray | None = None) -> float:
    """sqrt(E_{s ~ d_hat} KL(mode(pi_hat)(.|s) || pi_hat(.|s))) = sqrt(E_{d_hat}[-log max_a pi_hat(a|s)]), over
    the ``informative`` states only (all when None)."""
    kl = -np.log(np.clip(pi_hat.max(-1), 1e-300, None))
    if informative is not None:
        kl = np.where(informative, kl, 0.0)
    return float(np.sqrt(max(float((d_hat * kl).sum()), 0.0)))


def local_norm(run: CRPORun, d_hat: np.ndarray, alpha: float) -> float:
    """G_hat^2 = sum_k E_{s ~ d_hat} Var_{a ~ pi_k(.|s)}[(theta_{k+1} - theta_k)(s, a) / alpha]."""
    total = 0.0
    for before, after in zip(run.path[:-1], run.path[1:]):
        pi, g = softmax(before), (after - before) / alpha
        var = (pi * g**2).sum(-1) - (pi * g).sum(-1) ** 2
        total += float((d_hat * np.clip(var, 0.0, None)).sum())
    return total


def estimated_visitation(run: CRPORun, n_states: int, n_actions: int, gamma: float, p: float = 2.0
                         ) -> tuple[np.ndarray, float]:
    """d_hat(s) of pi_hat by DualDICE (f(x) = |x|^p / p) on the run's transitions, and E_D[w]."""
    data = run.data
    est = tabular_dualdice(n_states, n_actions, data.s, data.a, data.s_next, data.s0, run.policy, gamma, p=p)
    d_data = np.bincount(data.s, minlength=n_states) / max(len(data), 1)
    d_hat = np.clip(d_data * est.state_weights, 0.0, None)
    total = d_hat.sum()
    return (d_hat / total if total > 0 else d_data), est.mean_weight


@register_online("online_dualdice", "Meta-SRL: phi and alpha by inexact online learning on DualDICE-estimated bounds")
class OnlineDualDICE(OnlineLearner):
    Config = OnlineDualDICEConfig

    def __init__(self, cfg: OnlineDualDICEConfig, ctx: OnlineContext):
        super().__init__(cfg, ctx)
        self.phi = uniform_logits(ctx)
        self.alpha = ctx.alpha0
        self.history: dict[str, list] = {"d": [], "pi": [], "D": [], "eps": [], "g2": []}
        self.oracle_visitation = None  # set by the protocol when cfg.visitation == "exact"
        self.last_visitation: np.ndarray | None = None  # d_hat_t of the last observed task (diagnostics)

    def propose(self) -> tuple[np.ndarray, float]:
        return self.phi.copy(), self.alpha

    def observe(self, run: CRPORun, phi: np.ndarray, alpha: float) -> dict[str, float]:
        super().observe(run, phi, alpha)
        ctx, cfg = self.ctx, self.cfg
        if cfg.visitation == "exact":
            d_hat, mean_w = self.oracle_visitation(run.policy), 1.0
        else:
            d_hat, mean_w = estimated_visitation(run, ctx.n_states, ctx.n_actions, ctx.gamma, self.cfg.dualdice_p)
        self.last_visitation = d_hat
        distance = distance_term(d_hat, run.policy, phi)
        eps_opt = suboptimality_eps(d_hat, run.policy, informative_states(run)) if cfg.suboptimality_eps else 0.0
        eps = cfg.eps + abs(mean_w - 1.0) + eps_opt
        g2 = local_norm(run, d_hat, alpha)
        h = self.history
        for k, v in (("d", d_hat), ("pi", run.policy), ("D", distance), ("eps", eps), ("g2", g2)):
            h[k].append(v)
        w = task_weights(cfg, len(h["D"]))
        # phi_{t+1}
        if cfg.phi_update == "ftl":
            mass = np.einsum("t,ts->s", w, np.array(h["d"]))
            mix = np.einsum("t,ts,tsa->sa", w, np.array(h["d"]), np.array(h["pi"]))
            seen = mass > 1e-12
            self.phi[seen] = np.log(np.clip(shrink(mix[seen] / mass[seen, None], cfg.shrinkage), 1e-300, None))
        else:
            lr = cfg.lr_phi / (np.sqrt(self.t) if cfg.regret == "static" else 1.0)
            self.phi = np.log(shrink(softmax(self.phi - lr * distance_grad(d_hat, run.policy, phi)), cfg.shrinkage))
        self.phi -= self.phi.max(-1, keepdims=True)
        # alpha_{t+1}
        self.alpha = float(np.clip(next_step_size(cfg, alpha, h["D"], h["eps"], h["g2"]), cfg.alpha_min, cfg.alpha_max))
        return {"distance": distance, "eps": eps, "eps_suboptimality": eps_opt, "G": float(np.sqrt(g2)),
                "mean_weight": mean_w,
                "bound": float(step_size_bound(alpha, distance, eps, g2)), "alpha_next": self.alpha}
