"""Tasks and task families (DESIGN.md "Contracts").

A `Task` is a frozen record of one CMDP's parameters. A `TaskFamily` is a distribution over tasks
with disjoint ``train`` and ``test`` splits where the paper says so; ``make`` builds one `VecCMDP`
that steps ``envs_per_task`` copies of every given task as one batched program.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from safemeta.errors import UserError
from safemeta.rollout.vec_cmdp import VecCMDP

SPLITS = ("train", "test")

Range = tuple[float, float]  # [low, high] of a task parameter in one split (validated: low <= high)
IntRange = tuple[int, int]


def draw(rng: np.random.Generator, bounds: tuple, integer: bool = False) -> float | int:
    """Uniform draw from a closed ``[low, high]`` (integers inclusive)."""
    lo, hi = bounds
    return int(rng.integers(lo, hi + 1)) if integer else float(rng.uniform(lo, hi))


def split_ranges(cfg: Any, split: str) -> dict[str, tuple]:
    """The ``{param: (low, high)}`` of a family config's ``train`` / ``test`` section (for `safemeta list`)."""
    section = getattr(cfg, split, None)
    if section is None:
        return {}
    return {f.name: getattr(section, f.name) for f in fields(section)}


@dataclass(frozen=True)
class Task:
    """One CMDP of a family: ``family`` name, ``split``, ``index`` within the draw and its parameters."""

    family: str
    split: str
    id: int
    params: dict[str, Any] = field(hash=False, compare=True)


class TaskFamily(ABC):
    """A distribution over CMDPs. Subclasses set ``name`` and a ``Config`` dataclass.

    ``cost_limit`` (the paper's d) may differ by split (``cost_limit_for``): some papers tighten the
    limit at meta-test time.
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @property
    def horizon(self) -> int:
        """Episode length (time-limit truncation); every built-in Config has a ``horizon`` field."""
        return int(self.cfg.horizon)

    @property
    def cost_limit(self) -> float:
        return float(self.cfg.cost_limit)

    def cost_limit_for(self, split: str) -> float:
        return self.cost_limit

    def sample(self, n: int, split: str, rng: np.random.Generator) -> list[Task]:
        if split not in SPLITS:
            raise UserError(f"Unknown split '{split}'. Valid splits: {', '.join(SPLITS)}.")
        return [Task(self.name, split, int(rng.integers(2**31)), self.sample_params(split, rng)) for _ in range(n)]

    @abstractmethod
    def sample_params(self, split: str, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one task's parameters from the split's distribution."""

    @abstractmethod
    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> VecCMDP:
        """Batched env: ``len(tasks) * envs_per_task`` envs, task-major order."""
