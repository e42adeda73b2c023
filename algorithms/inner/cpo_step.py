"""The CPO subproblem and its closed-form solution, batched over tasks (Achiam et al. 2017, Sec. 6.1
and Appendix 10.2; Meta-CPO, Cho & Sun 2024, eq. 3-4).

For each task, with reward gradient g, cost gradient a, constraint value b = J_C - d and metric H
(Fisher matrix, or the identity):

    x* = argmax_x g^T x   s.t.   1/2 x^T H x <= delta,   b + a^T x <= 0                  (CPO eq. 3)

With q = g^T H^-1 g, r = g^T H^-1 a, s = a^T H^-1 a, A = q - r^2 / s, B = 2 delta - b^2 / s, the cases:

    case 4  a = 0 (s ~ 0) and b < 0          the constraint is irrelevant: TRPO step
    case 3  b < 0 and B < 0                  the whole trust region is feasible: TRPO step
    case 2  b < 0 and B >= 0                 the constraint boundary cuts the trust region: dual
    case 1  b >= 0 and B >= 0                infeasible now, but the trust region reaches feasibility: dual
    case 0  b >= 0 and B < 0                 infeasible: recovery step x = -sqrt(2 delta / s) H^-1 a   (eq. 4)

TRPO step: x = sqrt(2 delta / q) H^-1 g. Otherwise the Lagrangian
L = g^T x - lambda (1/2 x^T H x - delta) - nu (b + a^T x) gives x = H^-1 (g - nu a) / lambda and the dual
D(lambda, nu) = (q - 2 nu r + nu^2 s) / (2 lambda) + lambda delta - nu b, minimized over lambda, nu >= 0.
For fixed lambda, nu(lambda) = (lambda b + r)_+ / s, so (Appendix 10.2, written here for a *maximized* g;
the paper states the minimization form, where r changes sign) lambda* maximizes the concave piecewise
    f_a(lambda) = -1/2 (A / lambda + B lambda) + r b / s     on {lambda : lambda b + r > 0}   (nu > 0)
    f_b(lambda) = -1/2 (q / lambda + 2 delta lambda)         on {lambda : lambda b + r <= 0}  (nu = 0)
whose unconstrained maximizers sqrt(A / B) and sqrt(q / (2 delta)) are projected onto their pieces
(split at lambda = -r / b); lambda* is the better of the two, nu* = (lambda* b + r)_+ / s and
x* = (H^-1 g - nu* H^-1 a) / lambda*.

Everything is elementwise torch on ``[N]`` scalars plus ``[N, P]`` vectors, so the solution is
differentiable by autograd in g, a, b (and through H^-1 g, H^-1 a); branches are selected with
``torch.where`` on safe denominators so unselected branches never inject NaN into gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-8


@dataclass
class CPOSolution:
    step: Tensor  # [N, P] x*
    case: Tensor  # [N] long, 0..4 as above
    lagrange_trust: Tensor  # [N] lambda*
    lagrange_cost: Tensor  # [N] nu*


def cpo_cases(b: Tensor, q: Tensor, r: Tensor, s: Tensor, delta: float) -> Tensor:
    big_b = 2 * delta - b**2 / s.clamp(min=EPS)
    no_cost_grad = s <= EPS
    feasible = b < 0
    case = torch.where(feasible, torch.where(big_b < 0, 3, 2), torch.where(big_b < 0, 0, 1))
    return torch.where(no_cost_grad & feasible, torch.full_like(case, 4), case)


def solve_cpo(g: Tensor, a: Tensor, b: Tensor, hinv_g: Tensor, hinv_a: Tensor, delta: float) -> CPOSolution:
    """Closed-form CPO step for every task (see the module docstring)."""
    q = (g * hinv_g).sum(-1)
    r = (g * hinv_a).sum(-1)
    s = (a * hinv_a).sum(-1)
    case = cpo_cases(b.detach(), q.detach(), r.detach(), s.detach(), delta)
    s_safe = s.clamp(min=EPS)
    q_safe = q.clamp(min=EPS)
    # TRPO step (cases 3, 4)
    trpo_scale = torch.sqrt(2 * delta / q_safe)
    # dual (cases 1, 2)
    big_a = (q - r**2 / s_safe).clamp(min=EPS)
    big_b = (2 * delta - b**2 / s_safe).clamp(min=EPS)
    lam_a, lam_b = torch.sqrt(big_a / big_b), torch.sqrt(q_safe / (2 * delta))
    b_safe = torch.where(b.abs() < EPS, torch.full_like(b, -EPS), b)
    pivot = (-r / b_safe).clamp(min=0)  # lambda where lambda b + r changes sign
    zero = torch.zeros_like(pivot)
    feasible = b < 0  # nu > 0 piece is lambda < pivot when b < 0, lambda > pivot when b > 0
    lam_a = torch.where(feasible, torch.minimum(lam_a, pivot), torch.maximum(lam_a, pivot))
    lam_b = torch.where(feasible, torch.maximum(lam_b, pivot), torch.minimum(lam_b, pivot))
    lam_a_safe, lam_b_safe = lam_a.clamp(min=EPS), lam_b.clamp(min=EPS)
    f_a = -0.5 * (big_a / lam_a_safe + big_b * lam_a_safe) + r * b / s_safe
    f_b = -0.5 * (q_safe / lam_b_safe + 2 * delta * lam_b_safe)
    lam = torch.where(f_a >= f_b, lam_a_safe, lam_b_safe)
    nu = torch.clamp(lam * b + r, min=0.0) / s_safe
    dual_step = (hinv_g - nu.unsqueeze(-1) * hinv_a) / lam.unsqueeze(-1)
    # recovery (case 0): only decrease the cost
    rec_scale = torch.sqrt(2 * delta / s_safe)
    trpo = case >= 3
    dual = (case == 1) | (case == 2)
    step = torch.where(trpo.unsqueeze(-1), trpo_scale.unsqueeze(-1) * hinv_g,
                       torch.where(dual.unsqueeze(-1), dual_step, -rec_scale.unsqueeze(-1) * hinv_a))
    lagrange_trust = torch.where(trpo, 1 / trpo_scale, torch.where(dual, lam, zero))
    lagrange_cost = torch.where(dual, nu, torch.where(trpo, zero, rec_scale))
    return CPOSolution(step, case, lagrange_trust, lagrange_cost)
