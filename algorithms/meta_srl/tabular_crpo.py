"""CRPO on a finite CMDP with a softmax policy: Meta-SRL's within-task algorithm in the tabular setting.

CRPO (Xu, Liang, Lan 2021, Algorithm 1) with the softmax parameterization pi_theta(a|s) ∝ exp(theta(s, a)),
where the natural policy gradient step is the closed form (Agarwal et al. 2021, Lemma 15; CRPO eq. 5):

    if J_c(pi_k) <= d + eta:  theta_{k+1} = theta_k + alpha / (1 - gamma) * Q_r^{pi_k}     (reward step)
    otherwise:                theta_{k+1} = theta_k - alpha / (1 - gamma) * Q_c^{pi_k}     (cost step)

for k = 0 .. M-1 from theta_0 = phi (the meta-initialization) with step size alpha (both chosen by the
meta-learner in Meta-SRL). Q and J are evaluated exactly from the tables (`safemeta.rollout.tabular`), so the
within-task estimation error of CRPO's analysis is zero here; what Meta-SRL has to *estimate* after the
task is the visitation of the final policy, and for that every step also collects episodes of pi_k in
the true CMDP (``episodes`` per step, ``horizon`` steps each): the transitions the meta-learner's
DualDICE sees.

The output (CRPO's Algorithm 1, last line; ``output``): CRPO's bounds hold for the iterates the reward steps
were taken from, N_0 = {k < M : J_c(pi_k) <= d + eta}, not for the last iterate, and Algorithm 1 hands out
w_out drawn from N_0. ``output: feasible`` (the default, as `safemeta.algorithms.inner.crpo`'s neural
CRPO) hands out the latest iterate k in 0..M whose J_c is within d + eta (pi_M included: its J_c is known
exactly here), pi_M where none is; ``uniform`` draws k uniformly from N_0 (Algorithm 1 literally; pi_M
where N_0 is empty); ``last`` hands out pi_M. The handed-out policy pi_hat = pi_{theta_k} is the task's
output (the paper's "final, suboptimal policy"): the protocol scores it and the meta-learner learns from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from safemeta.rollout.tabular import TabularCMDP, evaluate, q_values


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[S, A]`` logits (stable)."""
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@dataclass
class Transitions:
    """Sampled experience: transitions ``(s, a, s')`` and the episodes' initial states ``s0``."""

    s: np.ndarray
    a: np.ndarray
    s_next: np.ndarray
    s0: np.ndarray

    @staticmethod
    def concat(parts: list["Transitions"]) -> "Transitions":
        return Transitions(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("s", "a", "s_next", "s0")))

    def __len__(self) -> int:
        return len(self.s)


def sample_episodes(cmdp: TabularCMDP, pi: np.ndarray, episodes: int, horizon: int,
                    rng: np.random.Generator) -> Transitions:
    """``episodes`` episodes of ``horizon`` steps of pi in the CMDP, all episodes stepped at once."""
    n_s = cmdp.n_states
    s = rng.choice(n_s, size=episodes, p=cmdp.mu0)
    s0 = s.copy()
    cum_pi, cum_p = pi.cumsum(-1), cmdp.P.cumsum(-1)
    ss, aa, nn = [], [], []
    for _ in range(horizon):
        a = np.minimum((rng.uniform(size=(episodes, 1)) > cum_pi[s]).sum(-1), cmdp.n_actions - 1)
        s_next = np.minimum((rng.uniform(size=(episodes, 1)) > cum_p[s, a]).sum(-1), n_s - 1)
        ss.append(s), aa.append(a), nn.append(s_next)
        s = s_next
    return Transitions(np.concatenate(ss), np.concatenate(aa), np.concatenate(nn), s0)


OutputRule = Literal["feasible", "uniform", "last"]


@dataclass
class CRPORun:
    logits: np.ndarray  # theta_k of the handed-out iterate k = ``out_index``, [S, A]
    policy: np.ndarray  # pi_hat = softmax(theta_k), the handed-out policy
    data: Transitions  # the episodes of pi_0 .. pi_{M-1}
    cost_steps: int  # how many of the M steps were cost steps
    returns: list[tuple[float, float]]  # exact (J_r, J_c) of pi_0 .. pi_M
    q_max: float  # max_k ||Q_k||_inf of the Q tables the M steps used
    path: list[np.ndarray]  # theta_0 .. theta_M: (theta_{k+1} - theta_k) / alpha = +-Q_k / (1 - gamma)
    out_index: int = -1  # k of the handed-out iterate (module docstring, "The output")
    reward_steps: list[int] | None = None  # N_0: the k < M whose step was a reward step

    @property
    def final_policy(self) -> np.ndarray:
        """pi_M, the last iterate (whatever the output rule handed out)."""
        return softmax(self.path[-1])


def output_index(returns: list[tuple[float, float]], cost_limit: float, tolerance: float, rule: OutputRule,
                 rng: np.random.Generator | None = None) -> int:
    """The handed-out k in 0..M from the iterates' (J_r, J_c) (module docstring, "The output")."""
    m = len(returns) - 1
    within = [k for k, (_, jc) in enumerate(returns) if jc <= cost_limit + tolerance]
    if rule == "last":
        return m
    if rule == "feasible":
        return within[-1] if within else m
    if rule == "uniform":
        n0 = [k for k in within if k < m]
        if not n0:
            return m
        return int(n0[(rng if rng is not None else np.random.default_rng()).integers(len(n0))])
    raise ValueError(f"unknown CRPO output rule {rule!r} (valid: feasible, uniform, last)")


def crpo(cmdp: TabularCMDP, init_logits: np.ndarray, alpha: float, steps: int, cost_limit: float,
         tolerance: float, episodes: int, horizon: int, rng: np.random.Generator,
         output: OutputRule = "feasible") -> CRPORun:
    """M = ``steps`` CRPO steps from ``init_logits`` with step size ``alpha``; the handed-out iterate by
    ``output`` (module docstring)."""
    theta = np.array(init_logits, dtype=np.float64)
    scale = alpha / (1.0 - cmdp.gamma)
    data, returns, cost_steps, q_max, path = [], [], 0, 0.0, [theta.copy()]
    for _ in range(steps):
        pi = softmax(theta)
        returns.append(evaluate(cmdp, pi))
        data.append(sample_episodes(cmdp, pi, episodes, horizon, rng))
        if returns[-1][1] <= cost_limit + tolerance:
            q = q_values(cmdp, pi, "r")
            theta = theta + scale * q
        else:
            q = q_values(cmdp, pi, "c")
            theta = theta - scale * q
            cost_steps += 1
        q_max = max(q_max, float(np.abs(q).max()))
        path.append(theta.copy())
        theta -= theta.max(-1, keepdims=True)  # softmax-invariant; keeps the logits bounded above
    returns.append(evaluate(cmdp, softmax(theta)))
    reward_steps = [k for k in range(steps) if returns[k][1] <= cost_limit + tolerance]
    k = output_index(returns, cost_limit, tolerance, output, rng)
    return CRPORun(path[k] - path[k].max(-1, keepdims=True), softmax(path[k]),
                   Transitions.concat(data) if data else Transitions(*(np.zeros(0, int),) * 4),
                   cost_steps, returns, q_max, path, k, reward_steps)
