"""``none``: no meta-training at all. The ``random`` baseline meta-tests a freshly initialized policy."""
from __future__ import annotations

from dataclasses import dataclass

from safemeta.training.adaptation import AdaptationResult
from safemeta.algorithms.outer.base import OuterUpdater
from safemeta.registry import register_outer
from safemeta.rollout.task import Task


@dataclass
class NoMetaConfig:
    pass


@register_outer("none", "no meta-training: theta stays at its random initialization")
class NoMeta(OuterUpdater):
    Config = NoMetaConfig
    needs_rollouts = False
    adapt = False
    needs_post_rollout = False

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        return {}
