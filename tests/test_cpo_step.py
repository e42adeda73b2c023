"""The closed-form CPO step against cvxpy solving the same QCQP on random small instances (all cases)."""
import cvxpy as cp
import numpy as np
import pytest
import torch

from safemeta.algorithms.inner.cpo_step import solve_cpo


def _instance(rng, n=6, case=None):
    m = rng.normal(size=(n, n))
    h = m @ m.T + n * np.eye(n)
    g, a = rng.normal(size=n), rng.normal(size=n)
    b = {"feasible": -abs(rng.normal()) * 0.2, "infeasible": abs(rng.normal()) * 0.2,
         "deep": -5.0, "hopeless": 50.0}[case]
    return h, g, a, b


def _cvxpy(h, g, a, b, delta):
    x = cp.Variable(len(g))
    prob = cp.Problem(cp.Maximize(g @ x), [0.5 * cp.quad_form(x, cp.psd_wrap(h)) <= delta, b + a @ x <= 0])
    prob.solve(solver=cp.CLARABEL)
    return prob.status, x.value


def _ours(h, g, a, b, delta):
    ht = torch.tensor(h)
    hinv = torch.linalg.inv(ht)
    gt, at = torch.tensor(g).unsqueeze(0), torch.tensor(a).unsqueeze(0)
    return solve_cpo(gt, at, torch.tensor([b]), gt @ hinv, at @ hinv, delta)


@pytest.mark.parametrize("kind", ["feasible", "infeasible", "deep", "hopeless"])
def test_matches_cvxpy_qcqp(kind):
    rng = np.random.default_rng({"feasible": 0, "infeasible": 1, "deep": 2, "hopeless": 3}[kind])
    seen = set()
    for _ in range(40):
        h, g, a, b = _instance(rng, case=kind)
        delta = float(rng.uniform(0.005, 0.05))
        sol = _ours(h, g, a, b, delta)
        case = int(sol.case)
        seen.add(case)
        status, x_ref = _cvxpy(h, g, a, b, delta)
        x = sol.step[0].numpy()
        if case == 0:
            assert status == "infeasible"
            # recovery: on the trust-region boundary along -H^-1 a, strictly decreasing the linearized cost
            assert 0.5 * x @ h @ x == pytest.approx(delta, rel=1e-6)
            assert a @ x < 0
        else:
            assert status == "optimal"
            np.testing.assert_allclose(x, x_ref, atol=2e-5 + 1e-3 * np.abs(x_ref).max())
            assert 0.5 * x @ h @ x <= delta * (1 + 1e-6) and b + a @ x <= 1e-6
    expected = {"feasible": {2, 3}, "infeasible": {0, 1}, "deep": {3}, "hopeless": {0}}[kind]
    assert seen <= expected | {2, 3} and seen & expected, seen


def test_zero_cost_gradient_is_a_trpo_step():
    g = torch.tensor([[3.0, 4.0]])
    sol = solve_cpo(g, torch.zeros(1, 2), torch.tensor([-1.0]), g, torch.zeros(1, 2), 0.02)
    assert int(sol.case) == 4
    torch.testing.assert_close(sol.step, g * (2 * 0.02 / 25) ** 0.5)


def test_batched_tasks_get_their_own_cases_and_gradients_are_finite():
    rng = np.random.default_rng(7)
    gs, as_, bs = [], [], []
    for b in (-5.0, -0.01, 0.01, 50.0):
        _, g, a, _ = _instance(rng, n=4, case="feasible")
        gs.append(g), as_.append(a), bs.append(b)
    g = torch.tensor(np.array(gs), requires_grad=True)
    a = torch.tensor(np.array(as_), requires_grad=True)
    b = torch.tensor(bs, requires_grad=True)
    sol = solve_cpo(g, a, b, g, a, 0.01)
    assert sol.case.tolist()[0] == 3 and sol.case.tolist()[-1] == 0
    sol.step.sum().backward()
    for t in (g, a, b):
        assert torch.isfinite(t.grad).all()


def _instance_in_case(case, seed=0, n=5):
    """A random instance (g, a, b, H) in the given case, away from the case boundaries (and, in the dual cases,
    with the cost constraint active)."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        h, g, a, _ = _instance(rng, n=n, case="feasible")
        b = {0: 5.0, 1: 0.05, 2: -0.05, 3: -5.0, 4: -0.5}[case]
        if case == 4:
            a = np.zeros(n)
        sol = _ours(h, g, a, b, 0.02)
        s = a @ np.linalg.solve(h, a)
        big_b = 2 * 0.02 - b**2 / s if s > 0 else -1.0
        active = case not in (1, 2) or float(sol.lagrange_cost) > 1e-3  # dual cases: on the constraint boundary
        if int(sol.case) == case and active and (case in (3, 4) or abs(big_b) > 1e-3):
            return h, g, a, b
    raise AssertionError(f"no instance in case {case}")


@pytest.mark.parametrize("case", [0, 1, 2, 3, 4])
def test_step_derivative_matches_finite_differences_in_every_case(case):
    """d x* / d (g, a, b) of the closed form, with H^-1 g and H^-1 a as functions of g and a (H fixed), against
    central finite differences: the recovery step (0), both dual cases (1, 2) and both TRPO steps (3, 4). The
    derivative is not trivially zero: a recovery step moves with a only, a TRPO step with g only."""
    h, g, a, b = _instance_in_case(case)
    hinv = torch.linalg.inv(torch.tensor(h))

    def step(gt, at, bt):
        return solve_cpo(gt, at, bt, gt @ hinv, at @ hinv, 0.02).step

    inputs = (torch.tensor(g).reshape(1, -1), torch.tensor(a).reshape(1, -1), torch.tensor([b], dtype=torch.float64))
    inputs = tuple(v.clone().requires_grad_(True) for v in inputs)
    assert int(solve_cpo(*inputs[:2], inputs[2], inputs[0] @ hinv, inputs[1] @ hinv, 0.02).case) == case
    assert torch.autograd.gradcheck(step, inputs, eps=1e-6, atol=1e-7, rtol=1e-4)
    jac = torch.autograd.functional.jacobian(step, tuple(v.detach() for v in inputs))
    nonzero = [float(j.abs().max()) > 1e-6 for j in jac]
    assert nonzero == {0: [False, True, False], 3: [True, False, False], 4: [True, False, False]}.get(case, [True] * 3)


def test_recovery_step_is_the_steepest_cost_descent_in_the_trust_region():
    """Case 0 against a solver: argmin_x a^T x s.t. 1/2 x^T H x <= delta, i.e. -sqrt(2 delta / a^T H^-1 a) H^-1 a."""
    rng = np.random.default_rng(11)
    for _ in range(5):
        h, g, a, b = _instance(rng, case="hopeless")
        sol = _ours(h, g, a, b, 0.02)
        assert int(sol.case) == 0
        x = cp.Variable(len(g))
        cp.Problem(cp.Minimize(a @ x), [0.5 * cp.quad_form(x, cp.psd_wrap(h)) <= 0.02]).solve(solver=cp.CLARABEL)
        np.testing.assert_allclose(sol.step[0].numpy(), x.value, atol=1e-6, rtol=1e-5)
