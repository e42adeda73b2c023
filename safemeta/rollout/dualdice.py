"""DualDICE (Nachum, Chow, Dai, Li 2019): off-policy estimation of the visitation ratio
w(s, a) = d^pi(s, a) / d^D(s, a) of a target policy pi from transitions (s, a, s') drawn from a data
distribution d^D, as Meta-SRL needs it (Khattar et al., arXiv 2405.16601: the distance term of the
within-task bound is weighted by the estimated visitation of the task's final policy).

With f(x) = |x|^p / p and its conjugate f*(y) = |y|^q / q (1/p + 1/q = 1), DualDICE's saddle problem
(its eq. 9-10, the Fenchel form that avoids double sampling) is

    min_nu max_zeta  J(nu, zeta) = E_{(s,a,s') ~ D, a' ~ pi(s')}[ (nu(s,a) - gamma nu(s',a')) zeta(s,a) - |zeta(s,a)|^q / q ]
                                   - (1 - gamma) E_{s0 ~ mu0, a0 ~ pi(s0)}[ nu(s0, a0) ],

whose solution has zeta*(s, a) = f'((nu* - B^pi nu*)(s, a)) = w(s, a), with (B^pi nu)(s, a) =
gamma E[nu(s', a')]. Conventions follow `safemeta.rollout.tabular`: d^pi is the normalized discounted occupancy.

``tabular_dualdice``: nu and zeta tables over S x A, expectations over pi(a'|s') taken exactly, any p > 1:
for p = 2 the saddle point of the empirical objective in closed form, for other p the inner maximum in
closed form per (s, a) and the outer (convex) minimum over nu by L-BFGS; the estimate converges to the
true ratio as data grows (tested against `safemeta.rollout.tabular.occupancy_ratio`, for p = 1.5, 2 and 3). It returns a `DualDICEResult` with the sanity
statistic E_D[w] (1 for an exact ratio: d^pi sums to one).

``feature_dualdice``: the same saddle problem with nu and zeta linear in a feature map phi(s, a) (tables
are the special case of one-hot features, and the result then equals ``tabular_dualdice``), solved in
closed form; expectations over pi(a'|s') enter through E_{a' ~ pi} phi(s', a'), estimated by sampling
actions. With `RandomFourierFeatures` of (s, a) (or any fixed neural feature map) it is the estimator for
continuous states and actions that the neural Meta-SRL path uses. Training nu and zeta as free MLPs by
simultaneous Adam descent / ascent diverged or stalled on the gridworld test, so the function class is
fixed features with exact linear heads: the saddle point is then solved, not chased.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class DualDICEResult:
    weights: Callable[[Tensor, Tensor], Tensor] | np.ndarray  # w(s, a): a table [S, A] or a function
    mean_weight: float  # E_D[w], ~1 when the estimate is consistent
    state_weights: np.ndarray | None = None  # tabular: d^pi(s) / d^D(s) = E_{a ~ D(.|s)}[w(s, a)]


def tabular_dualdice(n_states: int, n_actions: int, s: np.ndarray, a: np.ndarray, s_next: np.ndarray,
                     s0: np.ndarray, pi: np.ndarray, gamma: float, ridge: float = 1e-10, p: float = 2.0,
                     lbfgs_start: str | None = None) -> DualDICEResult:
    """The DualDICE saddle point with table-valued nu and zeta and f(x) = |x|^p / p.

    With x_i = e_{s_i a_i} - gamma sum_a' pi(a'|s'_i) e_{s'_i a'}, C = 1/n sum_i e_{s_i a_i} x_i^T, the
    empirical data distribution D = diag(d_hat) and m0 = mean_j sum_a pi(a|s0_j) e_{s0_j a}: the inner
    maximum is zeta = D^-1 C nu (the per-(s, a) mean of nu - gamma nu', *not* the per-sample residual, which
    would bring back the double-sampling bias), and the outer minimum solves (C^T D^-1 C) nu = (1 - gamma) m0.
    Then C^T zeta = (1 - gamma) m0: d_hat * zeta satisfies the empirical flow equation of pi's occupancy.

    Any p > 1: the inner maximum per (s, a) is still closed-form, zeta = f'(xbar) with xbar = D^-1 C nu and
    f'(x) = sign(x) |x|^(p-1), worth d_hat f(xbar); the outer problem min_nu sum d_hat f(xbar) - (1 - gamma)
    m0^T nu (+ ridge |nu|^2 / 2) is convex and is solved by L-BFGS from the p = 2 solution.
    ``lbfgs_start="zero"`` runs L-BFGS from nu = 0 instead, for every p (2 included): a check of the
    iterative solver that does not start it at the answer.
    """
    if p <= 1:
        raise ValueError(f"DualDICE needs p > 1 (f(x) = |x|^p / p strictly convex), got p={p}")
    sa = n_states * n_actions
    n = len(s)
    pi = np.asarray(pi, dtype=np.float64)
    idx = s * n_actions + a
    counts = np.bincount(idx, minlength=sa).astype(np.float64)
    c = np.zeros((sa, sa))
    np.add.at(c, (idx, idx), 1.0)
    nxt = s_next[:, None] * n_actions + np.arange(n_actions)
    np.add.at(c, (np.repeat(idx, n_actions), nxt.ravel()), (-gamma * pi[s_next]).ravel())
    c /= n
    m0 = np.zeros(sa)
    np.add.at(m0, (s0[:, None] * n_actions + np.arange(n_actions)).ravel(), (pi[s0] / len(s0)).ravel())
    d_inv = n / np.maximum(counts, 1.0)
    nu = np.linalg.solve(c.T @ (d_inv[:, None] * c) + ridge * np.eye(sa), (1.0 - gamma) * m0)
    if lbfgs_start not in (None, "zero"):
        raise ValueError(f"lbfgs_start must be None or 'zero', got {lbfgs_start!r}")
    if lbfgs_start == "zero":
        nu = np.zeros(sa)
    if p != 2.0 or lbfgs_start == "zero":
        nu = _minimize_dual(torch.from_numpy(c), torch.from_numpy(counts / n), torch.from_numpy(d_inv),
                            torch.from_numpy((1.0 - gamma) * m0), torch.from_numpy(nu), p, ridge).numpy()
    xbar = d_inv * (c @ nu)
    w = (np.sign(xbar) * np.abs(xbar) ** (p - 1.0)).reshape(n_states, n_actions)
    d_data = counts.reshape(n_states, n_actions) / n
    state_mass = d_data.sum(1)
    state_w = np.where(state_mass > 0, (w * d_data).sum(1) / np.maximum(state_mass, 1e-300), 0.0)
    return DualDICEResult(w, float((w * d_data).sum()), state_w)


def _minimize_dual(c: Tensor, d_hat: Tensor, d_inv: Tensor, lin: Tensor, nu0: Tensor, p: float, ridge: float,
                   iters: int = 10_000) -> Tensor:
    """argmin_nu sum_sa d_hat |xbar|^p / p - lin^T nu + ridge |nu|^2 / 2, xbar = d_inv * (C nu) (float64)."""
    nu = nu0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([nu], lr=1.0, max_iter=iters, tolerance_grad=1e-10, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        opt.zero_grad()
        xbar = d_inv * (c @ nu)
        loss = (d_hat * xbar.abs().pow(p)).sum() / p - lin @ nu + 0.5 * ridge * nu.pow(2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    return nu.detach()


def feature_dualdice(phi: Tensor, phi_next_pi: Tensor, phi0_pi: Tensor, gamma: float,
                     ridge: float = 1e-6) -> tuple[Tensor, float]:
    """Linear-in-features DualDICE (p = 2), solved exactly; returns (w_i for the data rows, E_D[w]).

    ``phi [n, k]``: features of the data's (s_i, a_i); ``phi_next_pi [n, k]``: E_{a' ~ pi(s'_i)} phi(s'_i, a');
    ``phi0_pi [m, k]``: E_{a ~ pi(s0_j)} phi(s0_j, a). With nu = phi^T u and zeta = phi^T v the saddle
    problem's inner maximum is v = B^-1 C u and the outer minimum solves (C^T B^-1 C) u = (1 - gamma) m0,
    where B = E_D[phi phi^T], C = E_D[phi (phi - gamma phi'_pi)^T] and m0 = E[phi0_pi]; then w = phi^T v.
    ``ridge`` (relative to the matrices' scale) regularizes both solves. Computed in float64.
    """
    x, xn, x0 = (t.detach().to(torch.float64) for t in (phi, phi_next_pi, phi0_pi))
    n, k = x.shape
    b = x.T @ x / n
    c = x.T @ (x - gamma * xn) / n
    m0 = x0.mean(0)
    eye = torch.eye(k, dtype=torch.float64, device=x.device)
    b_reg = b + ridge * b.diagonal().mean().clamp(min=1e-12) * eye
    b_inv_c = torch.linalg.solve(b_reg, c)
    a = c.T @ b_inv_c
    u = torch.linalg.solve(a + ridge * a.diagonal().mean().clamp(min=1e-12) * eye, (1 - gamma) * m0)
    w = x @ (b_inv_c @ u)
    return w.to(phi.dtype), float(w.mean())


class RandomFourierFeatures:
    """phi(x) = sqrt(2 / k) cos(W x / bandwidth + b) plus a constant, with W ~ N(0, I), b ~ U[0, 2 pi]
    (Rahimi & Recht 2007): a fixed feature map of concatenated (state, action) vectors."""

    def __init__(self, in_dim: int, n_features: int = 256, bandwidth: float = 1.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same features on every device
        self.w = torch.randn(in_dim, n_features, generator=g, device="cpu") / bandwidth
        self.b = torch.rand(n_features, generator=g, device="cpu") * 2 * np.pi
        self.scale = (2.0 / n_features) ** 0.5

    def __call__(self, x: Tensor) -> Tensor:
        if self.w.device != x.device:
            self.w, self.b = self.w.to(x.device), self.b.to(x.device)
        feats = self.scale * torch.cos(x @ self.w + self.b)
        return torch.cat([feats, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], dim=-1)
