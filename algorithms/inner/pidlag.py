"""PID-Lagrangian inner solvers (Stooke, Achiam & Abbeel 2020, "Responsive Safety in Reinforcement Learning by
PID Lagrangian Methods", Algorithm 2), batched over tasks: ``pidlag`` on the PPO base (``ppo.py``, the paper's
and OmniSafe's CPPOPID) and ``pidlag_trpo`` on the TRPO base (``trpo.py``, OmniSafe's TRPOPID).

Per task and inner step, before the policy step, with J_C the batch's constrained episode cost
(``Batch.ep_constraint_cost``) and d the limit:

    e        = J_C - d                                   (error)
    I        <- max(0, I + e)                            (integral, clamped at 0: no wind-up below the limit)
    D        = max(0, J_C - J_C,prev)                    (derivative on the cost's rise only)
    lambda   = clip(K_P e + K_I I + K_D D, 0, lagrange_max)

then the step on (A_R - lambda A_C) / (1 + lambda) (`trpolag.lagrangian_advantages`, OmniSafe's ``sum_norm``).
With ``delta_p_ema`` / ``delta_d_ema`` > 0 the proportional term uses an exponential moving average of e and the
derivative one of J_C (the paper's smoothed delta_p / delta_d, OmniSafe's ``pid_delta_*_ema_alpha``):
x_ema <- a x_ema + (1 - a) x. K_I alone is the plain Lagrangian dual ascent with rate K_I (`trpolag`).

Per-task state: ``lagrange`` (lambda, the last output), ``pid_integral`` (I), ``pid_error`` (e or its average),
``pid_cost`` (J_C or its average: the previous cost of D), ``pid_updates`` (how many updates so far).
Differences from Algorithm 2 / OmniSafe, both for an inner loop whose state starts afresh at every adaptation
(K = 1..10 updates): the first update has no derivative term and starts the averages at its own e and J_C
(Algorithm 2 sets J_C,prev = 0, which would read every adaptation's first cost as a rise from 0; OmniSafe starts
its averages at 0); the default EMA coefficients are 0 (Algorithm 2's unsmoothed terms; OmniSafe's 0.95 would
leave 5% of the proportional term after one update), and the derivative compares with the previous update
(OmniSafe's ``pid_d_delay`` is 10). The gains are OmniSafe's CPPOPID defaults (K_P 0.1, K_I 0.01, K_D 0.01,
penalty max 100), per unit of J_C - d on families with d = 25.

A lambda given from outside (C-MAML's meta lambda through ``inner_overrides``, ``eval.multipliers: inherit``)
starts the integral at lambda / K_I, so that the first update is lambda + K_I e (+ the P and D terms): the meta
lambda is where the controller's memory starts (OmniSafe starts its integral at ``lagrangian_multiplier_init``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import State, output_field
from safemeta.algorithms.inner.ppo import PPOConfig, PPOSolver
from safemeta.algorithms.inner.trpo import TRPOConfig, TrustRegionSolver
from safemeta.algorithms.inner.trpolag import lagrangian_advantages
from safemeta.config.schema import spec
from safemeta.registry import register_inner
from safemeta.rollout.batch import Batch


@dataclass
class PIDFields:
    kp: float = spec(0.1, ge=0, doc="K_P, gain of the (averaged) error J_C - d (OmniSafe's CPPOPID pid_kp)")
    ki: float = spec(0.01, ge=0, doc="K_I, gain of the integral of J_C - d, clamped at 0 (pid_ki)")
    kd: float = spec(0.01, ge=0, doc="K_D, gain of the rise of the (averaged) cost since the last update (pid_kd)")
    delta_p_ema: float = spec(0.0, ge=0, lt=1, doc="EMA coefficient of the proportional term's error (0: none, "
                                                   "Algorithm 2; OmniSafe's 0.95)")
    delta_d_ema: float = spec(0.0, ge=0, lt=1, doc="EMA coefficient of the cost the derivative differences (0: none)")
    lagrange_max: float = spec(100.0, gt=0, doc="upper clamp of lambda (OmniSafe's penalty_max)")
    output: Literal["last", "feasible"] = output_field("last")


@dataclass
class PIDLagConfig(PIDFields, PPOConfig):
    pass


@dataclass
class PIDLagTRPOConfig(PIDFields, TRPOConfig):
    pass


def pid_update(state: State, ep_cost: Tensor, cfg) -> State:
    """One step of Algorithm 2 for every task (module docstring); returns the new state with ``lagrange``."""
    e = ep_cost - state["cost_limit"]
    first = state["pid_updates"] <= 0
    a_p, a_d = float(cfg.delta_p_ema), float(cfg.delta_d_ema)
    error = torch.where(first, e, a_p * state["pid_error"] + (1 - a_p) * e)
    cost = torch.where(first, ep_cost, a_d * state["pid_cost"] + (1 - a_d) * ep_cost)
    rise = torch.where(first, torch.zeros_like(cost), (cost - state["pid_cost"]).clamp(min=0.0))
    integral = (state["pid_integral"] + e).clamp(min=0.0)
    lagrange = (cfg.kp * error + cfg.ki * integral + cfg.kd * rise).clamp(0.0, cfg.lagrange_max)
    return {**state, "lagrange": lagrange, "pid_integral": integral, "pid_error": error, "pid_cost": cost,
            "pid_updates": state["pid_updates"] + 1}


class PIDMultiplier:
    """The PID multiplier and the Lagrangian advantage, for a PPO or TRPO base (``before_step`` hook)."""

    cfg: PIDFields

    def default_state(self, n_tasks: int) -> State:
        z = lambda: torch.zeros(n_tasks)  # noqa: E731
        return {"lagrange": z(), "pid_integral": z(), "pid_error": z(), "pid_cost": z(), "pid_updates": z()}

    def init_state(self, n_tasks: int, cost_limit, **overrides: Tensor) -> State:
        state = super().init_state(n_tasks, cost_limit, **overrides)  # type: ignore[misc]
        if "lagrange" in overrides and "pid_integral" not in overrides and self.cfg.ki > 0:
            state["pid_integral"] = state["lagrange"] / self.cfg.ki
        return state

    def before_step(self, batch: Batch, state: State) -> State:
        return pid_update(state, batch.ep_constraint_cost, self.cfg)

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return lagrangian_advantages(batch, state["lagrange"])


@register_inner("pidlag", "PID-Lagrangian (PPO base): PPO on (A_R - lambda A_C)/(1+lambda), lambda by a PID controller "
                           "on J_C - d")
class PIDLag(PIDMultiplier, PPOSolver):
    Config = PIDLagConfig


@register_inner("pidlag_trpo", "PID-Lagrangian (TRPO base): TRPO on (A_R - lambda A_C)/(1+lambda), lambda by a PID "
                                "controller")
class PIDLagTRPO(PIDMultiplier, TrustRegionSolver):
    Config = PIDLagTRPOConfig
    supports_differentiable = False
