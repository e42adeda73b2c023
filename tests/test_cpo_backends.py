"""The three differentiable CPO backends agree on steps and vector-Jacobian products, the VJPs agree with
finite differences, and an infeasible task gets the recovery step instead of an error."""
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


def test_infeasible_task_gets_recovery_step_in_every_backend():
    g, a, _ = _problem(3, n_tasks=2)
    b = torch.tensor([5.0, -0.1], dtype=torch.float64)  # task 0 cannot reach feasibility
    for backend in ("analytic", "cvxpylayers", "qpth"):
        sol = solve_cpo(g, a, b, g, a, DELTA)
        assert int(sol.case[0]) == 0
        x = solve_with_backend(backend, g, a, b, sol, DELTA)
        expected = -((2 * DELTA / (a[0] @ a[0])) ** 0.5) * a[0]
        torch.testing.assert_close(x[0], expected)
        assert float(a[0] @ x[0]) < 0  # the recovery step decreases the linearized cost
