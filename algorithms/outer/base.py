"""The `OuterUpdater` contract (DESIGN.md "Contracts").

An outer updater declares what it needs from a meta-iteration and performs the meta update:

- ``needs_rollouts``: rollouts of the meta-policy on the sampled tasks (batch 0 of the result);
- ``adapt``: run the inner solver's K steps per task (False: only the meta-policy rollouts);
- ``needs_post_rollout``: a rollout of each adapted policy (the last batch of the result);
- ``needs_differentiable``: the adapted parameters must keep their graph to theta (Meta-CPO);
- ``needs_step_size``: the updater sets each task's inner step size (Meta-SRL).

Hooks let a method shape the inner loop without the trainer knowing the method:
``inner_overrides`` (per-task inner state such as a meta multiplier or step size) and
``initial_critics`` (e.g. C-MAML starts every task's cost critic from a global one), and
``inherited_state`` (the inner state meta-training learned, which a meta-test with ``eval.multipliers:
inherit`` starts its fine-tuning solver from, whichever solver that is).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from safemeta import registry
from safemeta.training.adaptation import AdaptationResult
from safemeta.algorithms.inner.base import InnerSolver
from safemeta.config.schema import Config
from safemeta.rollout.critics import CriticParams, Critics
from safemeta.errors import UserError
from safemeta.training.model import MetaParams
from safemeta.rollout.task import Task, TaskFamily


@dataclass
class OuterContext:
    """What an outer updater may use: the inner solver, the critics, theta, the config and the family."""

    inner: InnerSolver
    critics: Critics
    meta: MetaParams
    cfg: Config
    family: TaskFamily


class OuterUpdater(ABC):
    Config: ClassVar[type]
    needs_rollouts: ClassVar[bool] = True
    adapt: ClassVar[bool] = True
    needs_post_rollout: ClassVar[bool] = True
    needs_differentiable: ClassVar[bool] = False
    needs_step_size: ClassVar[bool] = False

    def __init__(self, cfg: Any, ctx: OuterContext):
        self.cfg = cfg
        self.ctx = ctx
        self.check_inner(ctx.cfg.inner, type(ctx.inner), ctx.cfg.outer)

    NEEDS = {"needs_differentiable": ("supports_differentiable", "differentiates through the inner steps",
                                      "has no differentiable step"),
             "needs_step_size": ("supports_step_size", "sets each task's inner step size", "takes no step size")}

    @classmethod
    def check_inner(cls, inner_name: str, inner_cls: type[InnerSolver], outer_name: str | None = None) -> None:
        """Refuse an inner solver that lacks a capability this updater needs, naming those that have it."""
        name = outer_name or next((n for n in registry.outer.names() if registry.outer.get(n) is cls), cls.__name__)
        for need, (cap, does, lacks) in cls.NEEDS.items():
            if getattr(cls, need) and not getattr(inner_cls, cap):
                able = [n for n in registry.inner.names() if getattr(registry.inner.get(n), cap)]
                raise UserError(f"Outer updater '{name}' {does}, and inner solver '{inner_name}' {lacks}. "
                                f"Inner solvers that can: {', '.join(able) or '(none)'}.")

    def inner_overrides(self, tasks: list[Task]) -> dict[str, Tensor]:
        return {}

    def inherited_state(self, tasks: list[Task]) -> dict[str, Tensor]:
        """Inner-state values learned by meta-training (e.g. a multiplier), by state key; a meta-test that
        inherits them passes those its fine-tuning solver has. Default: ``inner_overrides``."""
        return self.inner_overrides(tasks)

    def initial_critics(self, n_tasks: int) -> CriticParams:
        return self.ctx.meta.critics_for(n_tasks)

    def shard_terms(self, result: AdaptationResult) -> dict[str, Tensor] | None:
        """For an outer updater that needs the graph through the inner steps (``needs_differentiable``):
        what ``update`` needs from it, summed over ``result``'s tasks, computed where the graph lives (a
        Ray worker's shard); ``update`` then finds the sums over all shards in ``result.meta_terms``."""
        return None

    @abstractmethod
    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        """Update ``self.ctx.meta`` in place from this iteration's results; return scalar metrics."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
