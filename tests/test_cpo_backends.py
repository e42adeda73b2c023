"""The three differentiable CPO backends agree on steps and vector-Jacobian products, the VJPs agree with
finite differences, and an infeasible task gets the recovery step instead of an error."""
import cvxpy as cp
import numpy as np
import torch

from safemeta.algorithms.inner.cpo_backends import solve_with_backend
from safemeta.algorithms.inner.cpo_step import solve_cpo

DELTA = 0.02


def _step(backend, g, a, b):
    return solve_with_backend(backend, g, a, b, solve_cpo(g, a, b, g, a, DELTA), DELTA)


def _problem(seed, n_tasks=3, n=5):
    rng = np.random.default_rng(seed)
    g = torch.tensor(rng.normal(size=(n_tasks, n)), requires_grad=True)
    a = torch.tensor(rng.normal(size=(n_tasks, n)), requires_grad=True)
    b = torch.tensor([-0.15, 0.1, -0.05][:n_tasks], dtype=torch.float64, requires_grad=True)
    return g, a, b


def test_backends_agree_on_steps_and_vjps():
    g, a, b = _problem(0)
    cases = solve_cpo(g, a, b, g, a, DELTA).case.tolist()
    assert set(cases) & {1, 2}, cases  # the constraint is active somewhere: the interesting case
    cot = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("analytic", "cvxpylayers", "qpth"):
        x = _step(backend, g, a, b)
        grads = torch.autograd.grad((x * cot).sum(), (g, a, b))
        results[backend] = (x.detach(), grads)
    ref_x, ref_grads = results["analytic"]
    for backend in ("cvxpylayers", "qpth"):
        x, grads = results[backend]
        torch.testing.assert_close(x, ref_x, atol=1e-5, rtol=1e-4)
        for gr, rg in zip(grads, ref_grads):
            torch.testing.assert_close(gr, rg, atol=2e-4, rtol=2e-3)


def test_analytic_vjp_matches_finite_differences():
    g, a, b = _problem(2)
    inputs = (g.detach().clone().requires_grad_(True), a.detach().clone().requires_grad_(True),
              b.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda *t: _step("analytic", *t), inputs, eps=1e-6, atol=1e-5)


def _cvxpy_recovery(g, a, b):
    """Independently of the closed form: the CPO problem is infeasible (cvxpy says so), and the step that lowers
    the linearized cost most within the trust region, argmin a^T x s.t. 1/2 ||x||^2 <= delta, by cvxpy."""
    x = cp.Variable(len(g))
    trust = [0.5 * cp.sum_squares(x) <= DELTA]
    cpo = cp.Problem(cp.Maximize(g @ x), trust + [b + a @ x <= 0])
    cpo.solve(solver=cp.CLARABEL)
    assert cpo.status == "infeasible"
    cp.Problem(cp.Minimize(a @ x), trust).solve(solver=cp.CLARABEL)
    return torch.tensor(x.value)


def test_infeasible_task_gets_recovery_step_in_every_backend():
    """Task 0 cannot reach feasibility: every backend returns the recovery step a solver finds, with derivatives
    that match finite differences; task 1 (feasible, constraint active) keeps its own solver's step."""
    g, a, _ = _problem(3, n_tasks=2)
    b = torch.tensor([5.0, 0.05], dtype=torch.float64, requires_grad=True)
    sol = solve_cpo(g, a, b, g, a, DELTA)
    assert sol.case.tolist()[0] == 0 and sol.case.tolist()[1] in (1, 2)
    recovery = _cvxpy_recovery(g[0].detach().numpy(), a[0].detach().numpy(), float(b[0].detach()))
    ref = _step("analytic", g, a, b).detach()
    for backend in ("analytic", "cvxpylayers", "qpth"):
        x = _step(backend, g, a, b)
        torch.testing.assert_close(x[0].detach(), recovery, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(x[1].detach(), ref[1], atol=1e-5, rtol=1e-4)
        # d x_0 / d (g_0, a_0, b_0) by finite differences, task 1 riding along (its solver runs in every call)
        row0 = tuple(v[:1].detach().clone().requires_grad_(True) for v in (g, a, b))
        rest = tuple(v[1:].detach() for v in (g, a, b))
        assert torch.autograd.gradcheck(
            lambda *t: _step(backend, *(torch.cat([x, y]) for x, y in zip(t, rest)))[0], row0, eps=1e-6, atol=1e-6)
