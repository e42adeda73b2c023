"""The `OnlineLearner` contract (registry ``online``) of the online meta-RL protocol (`safemeta.online.protocol`).

Tasks arrive one after another. Before task t the learner proposes the within-task algorithm's
initialization phi_t (softmax logits ``[S, A]``) and step size alpha_t (`propose`); CRPO then runs M
steps from them on the task (`tabular_crpo.crpo`); afterwards the learner sees only what a learner in
the paper's setting sees (`observe`): the policy pi_hat_t that CRPO hands out (its output rule, `tabular_crpo`,
``run.policy`` / ``run.logits``), CRPO's iterates and the collected transitions, not the task's tables or
its optimum. Learners are small: a ``Config`` dataclass and two methods.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from safemeta.algorithms.meta_srl.tabular_crpo import CRPORun


@dataclass
class OnlineContext:
    """What a learner may know up front: sizes, discount, the within-task budget, and a way to draw
    training tasks of the family (only the ``pretrained`` baseline uses it, before the sequence)."""

    n_states: int
    n_actions: int
    gamma: float
    steps: int  # M, CRPO steps per task
    alpha0: float  # the step size of learners that do not learn one (and every learner's alpha_1)
    rng: np.random.Generator
    pretrain: Any = None  # callable(rng) -> logits of a policy trained on one training task


class OnlineLearner(ABC):
    Config: ClassVar[type]

    def __init__(self, cfg: Any, ctx: OnlineContext):
        self.cfg, self.ctx = cfg, ctx
        self.t = 0  # tasks observed so far

    @abstractmethod
    def propose(self) -> tuple[np.ndarray, float]:
        """(phi_t, alpha_t) for the next task."""

    def observe(self, run: CRPORun, phi: np.ndarray, alpha: float) -> dict[str, float]:
        """Learn from task t's CRPO run (started from ``phi`` with ``alpha``); return diagnostics."""
        self.t += 1
        return {}


def uniform_logits(ctx: OnlineContext) -> np.ndarray:
    return np.zeros((ctx.n_states, ctx.n_actions))
