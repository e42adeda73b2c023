"""Differentiable solvers of the CPO subproblem (Meta-CPO eq. 9): the step as a function of (g, a, b)
that autograd can backpropagate through, in the Euclidean metric for the layer backends.

- ``analytic``: the closed form of `cpo_step.solve_cpo`, differentiated by autograd.
- ``cvxpylayers``: max g^T x s.t. 1/2 ||x||^2 <= delta, b + a^T x <= 0 as a DPP convex layer (parameters
  g, a, b), solved by SCS through diffcp and differentiated by the layer (Agrawal et al. 2019).
- ``qpth``: min 1/2 lambda* ||x||^2 - g^T x s.t. a^T x <= -b for all tasks in one batched QP (Amos & Kolter
  2017): the trust region in its Lagrangian form, with lambda* the trust-region multiplier of the dual
  solution (itself a differentiable function of g, a, b). Its KKT conditions are the CPO problem's, so
  the solution is the CPO step.
Tasks in the infeasible case take the closed-form recovery step (eq. 4) in every backend: a solver
would only report infeasibility.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from safemeta.algorithms.inner.cpo_step import CPOSolution


def solve_with_backend(backend: str, g: Tensor, a: Tensor, b: Tensor, sol: CPOSolution, delta: float) -> Tensor:
    if backend == "analytic":
        return sol.step
    feasible = sol.case != 0
    if not bool(feasible.any()):
        return sol.step
    idx = feasible.nonzero().squeeze(-1)
    if backend == "cvxpylayers":
        x = _cvxpylayers_step(g[idx], a[idx], b[idx], delta)
    elif backend == "qpth":
        x = _qpth_step(g[idx], a[idx], b[idx], sol.lagrange_trust[idx])
    else:
        raise ValueError(f"unknown CPO backend '{backend}' (analytic, cvxpylayers, qpth)")
    out = sol.step.clone()
    out[idx] = x.to(out.dtype)
    return out


@lru_cache(maxsize=8)
def _layer(n_params: int, delta: float):
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    x = cp.Variable(n_params)
    g, a, b = cp.Parameter(n_params), cp.Parameter(n_params), cp.Parameter(1)
    problem = cp.Problem(cp.Maximize(g @ x), [0.5 * cp.sum_squares(x) <= delta, b + a @ x <= 0])
    assert problem.is_dpp()
    return CvxpyLayer(problem, parameters=[g, a, b], variables=[x])


def _cvxpylayers_step(g: Tensor, a: Tensor, b: Tensor, delta: float) -> Tensor:
    layer = _layer(g.shape[-1], float(delta))
    (x,) = layer(g.double(), a.double(), b.double().unsqueeze(-1),
                 solver_args={"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 200_000})
    return x


def _qpth_step(g: Tensor, a: Tensor, b: Tensor, lam: Tensor) -> Tensor:
    from qpth.qp import QPFunction, QPSolvers

    n, p = g.shape
    eye = torch.eye(p, dtype=torch.float64, device=g.device).expand(n, p, p)
    q_mat = lam.double().reshape(n, 1, 1) * eye
    empty = torch.empty(0, dtype=torch.float64, device=g.device)
    return QPFunction(verbose=-1, eps=1e-12, maxIter=50, solver=QPSolvers.PDIPM_BATCHED)(
        q_mat, -g.double(), a.double().unsqueeze(1), -b.double().unsqueeze(1), empty, empty)
