"""``tabular-gridworld``: a slippery n x n grid with a goal and costly cells, with exact tables.

Every task is a finite CMDP whose tables ``family.cmdp(task) -> safemeta.rollout.tabular.TabularCMDP`` are
built deterministically from the task's parameters, so optimality gaps, constraint violations and
occupancy ratios (Meta-SRL's tabular quantities) are exact (`safemeta.rollout.tabular`).

Grid and dynamics
-----------------
States are cells ``s = row * n + col`` (row 0 at the top). The start cell is (0, 0) and ``mu0`` is the
point mass on it. Actions: 0 up, 1 down, 2 left, 3 right. The intended move happens with probability
``1 - slip``; with probability ``slip / 2`` each the agent moves in one of the two perpendicular
directions instead. A move off the grid leaves the agent where it is.

Reward and cost (both on the *current* state, so ``r[s, a]`` and ``c[s, a]`` do not depend on ``a``)
---------------------------------------------------------------------------------------------------
* The goal is absorbing: every action keeps the agent there. ``r(s, a) = 1`` while ``s`` is the goal,
  so ``J_r = E sum_t gamma^t 1[s_t = goal]`` rewards reaching it early (at most 1 / (1 - gamma)).
* ``c(s, a) = 1`` while ``s`` is a costly cell, so ``J_c`` is the discounted time spent in costly cells.
  Costly cells are never the start, the goal, or a neighbour of the start.
* ``cost_limit`` (the d of the CMDP) bounds the *discounted* cost J_c with the family's ``gamma`` (the
  quantity `safemeta.rollout.tabular.evaluate` reports). The env's episodes are truncated at ``horizon``, so
  the trainer's undiscounted episode cost over the horizon is a different (larger) measurement.
The env never terminates (the goal is absorbing); episodes end by truncation at ``horizon``.

With the defaults (5 x 5, 5 costly cells, gamma 0.99, d = 0.5) and similarity 0, the limit binds
(the unconstrained optimum pays J_c > d) on about 2/3 of train and 4/5 of test tasks; none of 100
tasks per split was infeasible (largest minimal cost 0.22). A task whose minimal cost exceeds d makes
`safemeta.rollout.tabular.solve_constrained` raise; `safemeta.rollout.tabular.minimal_cost` checks it beforehand.

Task parameters and controllable similarity
-------------------------------------------
A task is ``{"slip": float, "goal": int, "costly": sorted list of ints}``. One *base task* is drawn
from ``family_seed``: a goal at Manhattan distance >= ``min_goal_dist`` from the start, ``n_costly``
costly cells, and a slip quantile ``q0 ~ U[0, 1]``. A task of a split is a perturbation of the base:

* goal: the base goal with probability ``similarity``, otherwise a fresh uniform draw (same rules);
* costly cells: each base cell is kept with probability ``similarity`` (and if still allowed, i.e.
  not the goal); the remaining ones are drawn uniformly from the free cells;
* slip: ``slip = lo + (hi - lo) * fold(q0 + (1 - similarity) * u)``, ``u ~ U[-1, 1]``, where
  ``[lo, hi]`` is the split's slip range and ``fold`` reflects into [0, 1] (period-2 triangle wave).
  The jitter is at most ``(1 - similarity) * (hi - lo)``; at similarity 0 the window has width 2,
  and the fold of such a uniform window is uniform, so slip ~ U[lo, hi] exactly.

So ``similarity = 1`` gives identical tasks (within a split) and ``similarity = 0`` i.i.d. tasks whose
goal and costly cells are uniform over the grid. The base task is shared by both splits.

Splits: ``train`` and ``test`` differ in the slip range: default train slip in [0, 0.2], test in
[0.2, 0.35] (disjoint up to the shared edge; test tasks are slipperier). Goal and costly cells
follow the same rules in both splits, so at ``similarity = 1`` the two splits differ only in slip.

The batched env
---------------
Observation: the one-hot state, float32 ``[B, n * n]``. Actions are discrete with ``n_actions = 4``
and ``act_dim = 4``: ``step(act)`` takes either an integer tensor ``[B]`` of action indices or a float
tensor ``[B, 4]`` of scores/logits of which the argmax is taken (so the framework's Gaussian actor with
``act_dim = 4`` acts through the argmax of its sample: a valid stochastic policy whose likelihood is the
Gaussian density of the sample). Next states are sampled from the stacked ``P[n_tasks, S, A, S']`` with
the env's ``torch.Generator`` (reproducible under ``reset(seed)``); reward and cost are the table
entries ``r[s, a]``, ``c[s, a]`` of the state the step starts from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from safemeta.config.schema import spec
from safemeta.errors import UserError
from safemeta.registry import register_env
from safemeta.rollout.tabular import TabularCMDP
from safemeta.rollout.task import Range, Task, TaskFamily
from safemeta.rollout.vec_cmdp import BatchedCMDP

UP, DOWN, LEFT, RIGHT = range(4)
_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))          # (d_row, d_col) of each action
_PERPENDICULAR = ((LEFT, RIGHT), (LEFT, RIGHT), (UP, DOWN), (UP, DOWN))
START = 0


@dataclass
class GridSplit:
    slip: Range = spec((0.0, 0.2), ge=0, le=1, doc="probability of moving perpendicular to the chosen action")


@dataclass
class TabularGridworldConfig:
    size: int = spec(5, ge=2, doc="n: the grid is n x n cells")
    horizon: int = spec(50, ge=1, doc="episode length (truncation)")
    gamma: float = spec(0.99, ge=0, lt=1, doc="discount of the exact tabular quantities (match critic.gamma)")
    cost_limit: float = spec(0.5, ge=0, doc="d: limit on the discounted cost J_c (discounted steps in costly cells)")
    n_costly: int = spec(5, ge=0, doc="number of costly cells")
    min_goal_dist: int = spec(4, ge=1, doc="Manhattan distance of the goal from the start cell (0, 0), at least")
    similarity: float = spec(0.5, ge=0, le=1, doc="1: every task equals the base task; 0: i.i.d. tasks")
    family_seed: int = spec(0, ge=0, doc="seed of the base task that all tasks perturb")
    train: GridSplit = field(default_factory=GridSplit)
    test: GridSplit = field(default_factory=lambda: GridSplit((0.2, 0.35)))


def _fold(x: float) -> float:
    """Reflect ``x`` into [0, 1] (triangle wave of period 2)."""
    x = x % 2.0
    return 2.0 - x if x > 1.0 else x


def gridworld_tables(size: int, slip: float, goal: int, costly: list[int]) -> tuple[np.ndarray, ...]:
    """``(P[S, A, S], r[S, A], c[S, A], mu0[S])`` of one task (see the module docstring)."""
    S, A = size * size, 4
    P = np.zeros((S, A, S))
    for s in range(S):
        row, col = divmod(s, size)
        for a in range(A):
            if s == goal:
                P[s, a, s] = 1.0
                continue
            for move, prob in ((a, 1.0 - slip), (_PERPENDICULAR[a][0], slip / 2), (_PERPENDICULAR[a][1], slip / 2)):
                r2, c2 = row + _MOVES[move][0], col + _MOVES[move][1]
                target = r2 * size + c2 if 0 <= r2 < size and 0 <= c2 < size else s
                P[s, a, target] += prob
    r = np.zeros((S, A))
    r[goal] = 1.0
    c = np.zeros((S, A))
    c[list(costly)] = 1.0
    mu0 = np.zeros(S)
    mu0[START] = 1.0
    return P, r, c, mu0


class TabularGridworldEnv(BatchedCMDP):
    """All envs of all tasks as one tensor program over stacked tables (see the module docstring)."""

    can_terminate = False  # terminated is always false
    n_actions = 4
    act_dim = 4

    def __init__(self, P: np.ndarray, r: np.ndarray, c: np.ndarray, mu0: np.ndarray, horizon: int,
                 envs_per_task: int, device: str = "cpu", seed: int = 0):
        n_tasks, S = P.shape[0], P.shape[1]
        super().__init__(n_tasks, envs_per_task, horizon, device, seed)
        self.n_states = self.obs_dim = S
        dev = self.device
        # cumulative rows, renormalized so that the last entry is exactly 1 (a uniform u < 1 then never
        # selects a trailing zero-probability state)
        cdf = torch.as_tensor(P, dtype=torch.float64, device=dev).cumsum(-1)
        self.cdf = cdf / cdf[..., -1:]                                          # [n_tasks, S, A, S]
        mu_cdf = torch.as_tensor(mu0, dtype=torch.float64, device=dev).cumsum(-1)
        self.mu0_cdf = mu_cdf / mu_cdf[..., -1:]                                # [n_tasks, S]
        self.r = torch.as_tensor(r, dtype=torch.float32, device=dev)            # [n_tasks, S, A]
        self.c = torch.as_tensor(c, dtype=torch.float32, device=dev)
        self.task_of_env = torch.arange(n_tasks, device=dev).repeat_interleave(envs_per_task)
        self.state = torch.zeros(self.num_envs, dtype=torch.long, device=dev)

    def _sample(self, cdf_rows: Tensor) -> Tensor:
        """One index per row of ``cdf_rows[B, K]``: the number of cdf entries below ``u ~ U[0, 1)``."""
        u = torch.rand(cdf_rows.shape[0], 1, generator=self.gen, device=self.device, dtype=torch.float64)
        return (u >= cdf_rows).sum(-1).clamp_(max=cdf_rows.shape[-1] - 1)

    def _reset_envs(self, mask: Tensor) -> None:
        start = self._sample(self.mu0_cdf[self.task_of_env])
        self.state = torch.where(mask, start, self.state)

    def _observe(self) -> Tensor:
        return F.one_hot(self.state, self.n_states).to(torch.float32)

    def action_indices(self, act: Tensor) -> Tensor:
        """``[B]`` action indices from integer indices ``[B]`` or float scores ``[B, 4]`` (argmax)."""
        B = self.num_envs
        if act.dtype.is_floating_point:
            if act.shape != (B, self.n_actions):
                raise ValueError(f"float actions must be scores of shape [{B}, {self.n_actions}]; "
                                 f"got {tuple(act.shape)}.")
            return act.argmax(-1)
        if act.dtype == torch.bool or act.shape != (B,):
            raise ValueError(f"integer actions must be indices of shape [{B}]; got {act.dtype} {tuple(act.shape)}.")
        if bool(((act < 0) | (act >= self.n_actions)).any()):
            raise ValueError(f"action indices must lie in [0, {self.n_actions - 1}].")
        return act.long()

    def step(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict]:
        """Discrete step: indices ``[B]`` (long) or scores ``[B, 4]`` (float, argmax).

        The action is passed to `BatchedCMDP.step` as a one-hot float vector, which its [-1, 1] clamp
        leaves unchanged, so the time limit / auto-reset / ``final_obs`` bookkeeping is shared.
        """
        idx = self.action_indices(act.to(self.device))
        return super().step(F.one_hot(idx, self.n_actions).to(torch.float32))

    def _transition(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = act.argmax(-1)  # one-hot from `step`
        k, s = self.task_of_env, self.state
        reward, cost = self.r[k, s, a], self.c[k, s, a]
        self.state = self._sample(self.cdf[k, s, a])
        return reward, cost, torch.zeros_like(reward, dtype=torch.bool)


@register_env("tabular-gridworld", "Slippery n x n grid, absorbing goal, costly cells; exact tables (Meta-SRL)")
class TabularGridworld(TaskFamily):
    """Slippery grid CMDPs with exact tables (``cmdp(task)``) and controllable task similarity."""

    name = "tabular-gridworld"
    Config = TabularGridworldConfig

    def __init__(self, cfg: TabularGridworldConfig):
        super().__init__(cfg)
        n = cfg.size
        self.n_states = n * n
        self.goal_cells = [s for s in range(self.n_states) if sum(divmod(s, n)) >= cfg.min_goal_dist]
        if not self.goal_cells:
            raise UserError(f"tabular-gridworld: min_goal_dist {cfg.min_goal_dist} leaves no goal cell on a "
                            f"{n} x {n} grid (the farthest cell is at distance {2 * (n - 1)}).")
        self.costly_cells = [s for s in range(self.n_states) if sum(divmod(s, n)) > 1]  # not start / its neighbours
        if cfg.n_costly > len(self.costly_cells) - 1:
            raise UserError(f"tabular-gridworld: n_costly {cfg.n_costly} does not fit a {n} x {n} grid "
                            f"(at most {len(self.costly_cells) - 1}).")
        if not 0.0 <= cfg.similarity <= 1.0:
            raise UserError(f"tabular-gridworld: similarity must lie in [0, 1]; got {cfg.similarity}.")
        self.base = self._base_task()

    def _draw_costly(self, rng: np.random.Generator, goal: int, keep: list[int]) -> list[int]:
        free = [s for s in self.costly_cells if s != goal and s not in keep]
        extra = rng.choice(free, size=self.cfg.n_costly - len(keep), replace=False)
        return sorted(int(s) for s in [*keep, *extra])

    def _base_task(self) -> dict:
        rng = np.random.default_rng([self.cfg.family_seed, 0x6772])
        goal = int(rng.choice(self.goal_cells))
        return {"slip_quantile": float(rng.uniform()), "goal": goal, "costly": self._draw_costly(rng, goal, [])}

    def sample_params(self, split: str, rng: np.random.Generator) -> dict:
        sim, base = self.cfg.similarity, self.base
        lo, hi = getattr(self.cfg, split).slip
        slip = lo + (hi - lo) * _fold(base["slip_quantile"] + (1.0 - sim) * rng.uniform(-1.0, 1.0))
        goal = base["goal"] if rng.uniform() < sim else int(rng.choice(self.goal_cells))
        kept = rng.uniform(size=len(base["costly"])) < sim
        keep = [s for s, k in zip(base["costly"], kept) if k and s != goal]
        return {"slip": float(min(max(slip, lo), hi)), "goal": goal, "costly": self._draw_costly(rng, goal, keep)}

    def tables(self, task: Task | dict) -> tuple[np.ndarray, ...]:
        """``(P, r, c, mu0)`` of a task (or of a params dict)."""
        p = task.params if isinstance(task, Task) else task
        return gridworld_tables(self.cfg.size, p["slip"], p["goal"], p["costly"])

    def cmdp(self, task: Task | dict) -> TabularCMDP:
        """The task's exact `TabularCMDP` (discount ``cfg.gamma``)."""
        return TabularCMDP(*self.tables(task), gamma=self.cfg.gamma)

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> TabularGridworldEnv:
        P, r, c, mu0 = (np.stack(x) for x in zip(*(self.tables(t) for t in tasks)))
        return TabularGridworldEnv(P, r, c, mu0, self.cfg.horizon, envs_per_task, device, seed)
