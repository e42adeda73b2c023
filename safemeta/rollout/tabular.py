"""Exact tools for finite (tabular) constrained MDPs: occupancy measures, policy evaluation and the
constrained optimum by linear programming (numpy / scipy, float64).

These give the ground truth that Meta-SRL's tabular guarantees are stated in (Khattar et al.,
arXiv 2405.16601): per task the optimality gap and constraint violation of a policy, and the
state-action visitation ratios that DualDICE estimates.

Conventions
-----------
A CMDP is ``(S, A, P, r, c, mu0, gamma)`` with ``P[s, a, s'] = Pr(s_{t+1} = s' | s_t = s, a_t = a)``,
reward ``r[s, a]``, cost ``c[s, a]``, initial distribution ``mu0[s]`` and discount ``0 <= gamma < 1``.
A (stationary, stochastic) policy is an array ``pi[s, a] = pi(a | s)`` whose rows sum to one.

* Returns are discounted and start at t = 0 (not normalized by 1 - gamma)::

      J_r(pi) = E[ sum_{t>=0} gamma^t r(s_t, a_t) ],   J_c(pi) = E[ sum_{t>=0} gamma^t c(s_t, a_t) ],

  with s_0 ~ mu0, a_t ~ pi(. | s_t), s_{t+1} ~ P(. | s_t, a_t).
* The normalized discounted state-action occupancy (a probability distribution over S x A)::

      d_pi(s, a) = (1 - gamma) sum_{t>=0} gamma^t Pr(s_t = s, a_t = a),

  so that ``J_x(pi) = <d_pi, x> / (1 - gamma)`` for x in {r, c}.
* A constrained problem with limit ``b`` is ``max_pi J_r(pi)  s.t.  J_c(pi) <= b``.

Everything is computed by direct linear solves (policy evaluation) or one LP (the constrained
optimum); no sampling and no iteration to a tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import linprog

# Numerical tolerances: table validation, the LP solver's feasibility, and "this state is never
# visited" when a policy is read off an occupancy measure.
_ATOL = 1e-8
_LP_TOL = 1e-9
_UNVISITED = 1e-12


@dataclass
class TabularCMDP:
    """A finite discounted CMDP (see the module docstring for the conventions).

    Arrays are converted to float64 and validated on construction: ``P`` is ``[S, A, S]``, non-negative,
    with every ``P[s, a, :]`` summing to one; ``r`` and ``c`` are finite ``[S, A]``; ``mu0`` is a
    distribution over ``S``; ``0 <= gamma < 1``. A `ValueError` names the first violation.
    """

    P: np.ndarray
    r: np.ndarray
    c: np.ndarray
    mu0: np.ndarray
    gamma: float

    def __post_init__(self) -> None:
        self.P = np.array(self.P, dtype=np.float64)
        self.r = np.array(self.r, dtype=np.float64)
        self.c = np.array(self.c, dtype=np.float64)
        self.mu0 = np.array(self.mu0, dtype=np.float64)
        self.gamma = float(self.gamma)
        if self.P.ndim != 3 or self.P.shape[0] != self.P.shape[2]:
            raise ValueError(f"P must have shape [S, A, S]; got {self.P.shape}.")
        S, A = self.P.shape[:2]
        if S == 0 or A == 0:
            raise ValueError(f"P must have at least one state and one action; got shape {self.P.shape}.")
        for name in ("r", "c"):
            arr = getattr(self, name)
            if arr.shape != (S, A):
                raise ValueError(f"{name} must have shape [S, A] = {(S, A)}; got {arr.shape}.")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} has non-finite entries.")
        if self.mu0.shape != (S,):
            raise ValueError(f"mu0 must have shape [S] = {(S,)}; got {self.mu0.shape}.")
        if not np.all(np.isfinite(self.P)) or self.P.min() < 0:
            raise ValueError("P must be finite and non-negative.")
        row_err = np.abs(self.P.sum(-1) - 1.0)
        if row_err.max() > _ATOL:
            s, a = np.unravel_index(int(row_err.argmax()), row_err.shape)
            raise ValueError(f"P[{s}, {a}, :] sums to {self.P[s, a].sum():.12g}, not 1.")
        if not np.all(np.isfinite(self.mu0)) or self.mu0.min() < 0 or abs(self.mu0.sum() - 1.0) > _ATOL:
            raise ValueError(f"mu0 must be a probability distribution (non-negative, sums to 1); "
                             f"sums to {self.mu0.sum():.12g}.")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1); got {self.gamma}.")

    @property
    def n_states(self) -> int:
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        return self.P.shape[1]


def _signal(cmdp: TabularCMDP, x: str | np.ndarray) -> np.ndarray:
    """``"r"`` / ``"c"`` or an explicit ``[S, A]`` table."""
    if isinstance(x, str):
        if x not in ("r", "c"):
            raise ValueError(f"signal must be 'r', 'c' or an [S, A] array; got {x!r}.")
        return getattr(cmdp, x)
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (cmdp.n_states, cmdp.n_actions):
        raise ValueError(f"signal must have shape {(cmdp.n_states, cmdp.n_actions)}; got {x.shape}.")
    return x


def check_policy(cmdp: TabularCMDP, pi: np.ndarray) -> np.ndarray:
    """``pi`` as a float64 ``[S, A]`` array of action distributions (`ValueError` otherwise)."""
    pi = np.asarray(pi, dtype=np.float64)
    if pi.shape != (cmdp.n_states, cmdp.n_actions):
        raise ValueError(f"pi must have shape [S, A] = {(cmdp.n_states, cmdp.n_actions)}; got {pi.shape}.")
    if not np.all(np.isfinite(pi)) or pi.min() < -_ATOL or np.abs(pi.sum(-1) - 1.0).max() > 1e-6:
        raise ValueError("pi must hold one probability distribution over actions per state (rows sum to 1).")
    return pi


def policy_transition(cmdp: TabularCMDP, pi: np.ndarray) -> np.ndarray:
    """State-to-state kernel under pi: ``P_pi[s, s'] = sum_a pi(a|s) P(s'|s, a)``."""
    pi = check_policy(cmdp, pi)
    return np.einsum("sa,sat->st", pi, cmdp.P)


def state_occupancy(cmdp: TabularCMDP, pi: np.ndarray) -> np.ndarray:
    """``d_pi(s) = (1 - gamma) sum_t gamma^t Pr(s_t = s)``.

    It is the solution of the flow equation ``d = (1 - gamma) mu0 + gamma P_pi^T d``, i.e.
    ``(I - gamma P_pi^T) d = (1 - gamma) mu0``, which has a unique solution for gamma < 1.
    """
    P_pi = policy_transition(cmdp, pi)
    S = cmdp.n_states
    d = np.linalg.solve(np.eye(S) - cmdp.gamma * P_pi.T, (1.0 - cmdp.gamma) * cmdp.mu0)
    return np.clip(d, 0.0, None)  # exact up to round-off; remove -1e-17 noise


def occupancy(cmdp: TabularCMDP, pi: np.ndarray) -> np.ndarray:
    """Normalized discounted state-action occupancy ``d_pi[s, a] = d_pi(s) pi(a|s)`` (sums to 1).

    Equivalently ``d_pi(s, a) = (1 - gamma) sum_t gamma^t Pr(s_t = s, a_t = a)``; see `state_occupancy`
    for the linear system that is solved.
    """
    pi = check_policy(cmdp, pi)
    return state_occupancy(cmdp, pi)[:, None] * pi


def state_values(cmdp: TabularCMDP, pi: np.ndarray, signal: str | np.ndarray = "r") -> np.ndarray:
    """``V^pi_x(s) = E[sum_t gamma^t x(s_t, a_t) | s_0 = s]`` from ``(I - gamma P_pi) V = x_pi``,
    with ``x_pi(s) = sum_a pi(a|s) x(s, a)`` and ``x`` = ``"r"``, ``"c"`` or an ``[S, A]`` table."""
    pi = check_policy(cmdp, pi)
    x = _signal(cmdp, signal)
    P_pi = np.einsum("sa,sat->st", pi, cmdp.P)
    return np.linalg.solve(np.eye(cmdp.n_states) - cmdp.gamma * P_pi, (pi * x).sum(-1))


def q_values(cmdp: TabularCMDP, pi: np.ndarray, signal: str | np.ndarray = "r") -> np.ndarray:
    """``Q^pi_x(s, a) = x(s, a) + gamma sum_s' P(s'|s, a) V^pi_x(s')``."""
    x = _signal(cmdp, signal)
    return x + cmdp.gamma * cmdp.P @ state_values(cmdp, pi, x)


def evaluate(cmdp: TabularCMDP, pi: np.ndarray) -> tuple[float, float]:
    """Discounted returns ``(J_r, J_c)`` of pi: ``J_x = <d_pi, x> / (1 - gamma) = <mu0, V^pi_x>``."""
    d = occupancy(cmdp, pi)
    scale = 1.0 / (1.0 - cmdp.gamma)
    return float((d * cmdp.r).sum() * scale), float((d * cmdp.c).sum() * scale)


def policy_from_occupancy(d: np.ndarray) -> np.ndarray:
    """``pi(a|s) = d(s, a) / sum_a' d(s, a')``, uniform where ``sum_a d(s, a) = 0`` (unvisited states,
    where any choice gives the same occupancy)."""
    d = np.clip(np.asarray(d, dtype=np.float64), 0.0, None)
    mass = d.sum(-1, keepdims=True)
    uniform = np.full_like(d, 1.0 / d.shape[-1])
    return np.where(mass > _UNVISITED, d / np.where(mass > _UNVISITED, mass, 1.0), uniform)


def occupancy_ratio(cmdp: TabularCMDP, pi: np.ndarray, d_data: np.ndarray) -> np.ndarray:
    """The DualDICE target ``w(s, a) = d_pi(s, a) / d_D(s, a)`` for a data distribution ``d_D[S, A]``
    (e.g. ``occupancy(cmdp, behaviour_policy)``); 0 where ``d_D(s, a) = 0``."""
    d_pi = occupancy(cmdp, pi)
    d_data = np.asarray(d_data, dtype=np.float64)
    if d_data.shape != d_pi.shape:
        raise ValueError(f"d_data must have shape {d_pi.shape}; got {d_data.shape}.")
    return np.where(d_data > 0, d_pi / np.where(d_data > 0, d_data, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# The LP over occupancy measures (Altman 1999, "Constrained Markov Decision Processes", ch. 3)
# ---------------------------------------------------------------------------------------------
class ConstrainedSolution(NamedTuple):
    """``(pi, J_r, J_c)``: an optimal policy and its exact discounted returns."""

    pi: np.ndarray
    J_r: float
    J_c: float


def _flow_constraints(cmdp: TabularCMDP) -> tuple[np.ndarray, np.ndarray]:
    """``A_eq d = b_eq`` with d flattened as ``d[s * A + a]``::

        sum_a d(s', a) - gamma sum_{s,a} P(s'|s, a) d(s, a) = (1 - gamma) mu0(s')   for every s'.

    Summing over s' shows that every solution sums to 1, so d >= 0 makes it a distribution; every
    such d is the occupancy of the policy ``d(s, a) / sum_a d(s, a)``.
    """
    S, A = cmdp.n_states, cmdp.n_actions
    own = np.repeat(np.eye(S), A, axis=1)             # own[s', s*A + a] = [s == s']
    inflow = cmdp.P.reshape(S * A, S).T               # inflow[s', s*A + a] = P(s'|s, a)
    return own - cmdp.gamma * inflow, (1.0 - cmdp.gamma) * cmdp.mu0


def _solve_lp(cmdp: TabularCMDP, objective: np.ndarray, cost_limit: float | None):
    """``min <objective, d>`` over occupancy measures, optionally with ``<d, c> / (1 - gamma) <= limit``."""
    A_eq, b_eq = _flow_constraints(cmdp)
    A_ub = b_ub = None
    if cost_limit is not None:
        # <d, c> <= (1 - gamma) * limit: the same constraint written in occupancy units (better scaled)
        A_ub = cmdp.c.reshape(1, -1)
        b_ub = np.array([(1.0 - cmdp.gamma) * float(cost_limit)])
    return linprog(objective.reshape(-1), A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=(0, None),
                   method="highs", options={"primal_feasibility_tolerance": _LP_TOL,
                                            "dual_feasibility_tolerance": _LP_TOL})


def minimal_cost(cmdp: TabularCMDP) -> tuple[float, np.ndarray]:
    """``(min_pi J_c(pi), argmin pi)``: the smallest cost limit for which the constrained problem is
    feasible, from the LP ``min <d, c> / (1 - gamma)`` over occupancy measures."""
    res = _solve_lp(cmdp, cmdp.c, None)
    if res.status != 0:  # the flow polytope is never empty for a valid CMDP
        raise RuntimeError(f"min-cost LP failed: {res.message}")
    pi = policy_from_occupancy(res.x.reshape(cmdp.n_states, cmdp.n_actions))
    return evaluate(cmdp, pi)[1], pi


def solve_constrained(cmdp: TabularCMDP, cost_limit: float) -> ConstrainedSolution:
    """The constrained optimum ``max_pi J_r(pi) s.t. J_c(pi) <= cost_limit`` as the LP (Altman 1999)::

        max_{d >= 0}  <d, r>
        s.t.          sum_a d(s', a) = (1 - gamma) mu0(s') + gamma sum_{s,a} P(s'|s, a) d(s, a)   for all s'
                      <d, c> / (1 - gamma) <= cost_limit

    solved with HiGHS (``scipy.optimize.linprog(method="highs")``). The optimal policy is read off the
    optimal occupancy, ``pi*(a|s) = d*(s, a) / sum_a d*(s, a)`` (uniform in unvisited states); it may
    randomize (in at most one state for a basic solution). ``J_r*`` and ``J_c*`` are the exact returns
    of that policy (`evaluate`), so ``optimality_gap(cmdp, pi*, limit)`` is zero up to round-off.

    An infeasible limit raises a `ValueError` that names the minimal achievable cost (`minimal_cost`).
    """
    res = _solve_lp(cmdp, -cmdp.r, cost_limit)
    if res.status == 2:
        j_min, _ = minimal_cost(cmdp)
        raise ValueError(f"cost limit {float(cost_limit):.6g} is infeasible: the minimal achievable discounted "
                         f"cost J_c is {j_min:.9g} (no policy does better; use a limit >= that value)")
    if res.status != 0:
        raise RuntimeError(f"constrained LP failed (status {res.status}): {res.message}")
    pi = policy_from_occupancy(res.x.reshape(cmdp.n_states, cmdp.n_actions))
    j_r, j_c = evaluate(cmdp, pi)
    return ConstrainedSolution(pi, j_r, j_c)


def optimality_gap(cmdp: TabularCMDP, pi: np.ndarray, cost_limit: float,
                   solution: ConstrainedSolution | None = None) -> float:
    """``J_r* - J_r(pi)`` with ``J_r*`` the constrained optimum at ``cost_limit`` (pass ``solution`` to
    reuse a `solve_constrained` result). Negative when pi beats the optimum by violating the constraint."""
    if solution is None:
        solution = solve_constrained(cmdp, cost_limit)
    return solution.J_r - evaluate(cmdp, pi)[0]


def constraint_violation(cmdp: TabularCMDP, pi: np.ndarray, cost_limit: float) -> float:
    """``max(0, J_c(pi) - cost_limit)``."""
    return max(0.0, evaluate(cmdp, pi)[1] - float(cost_limit))
