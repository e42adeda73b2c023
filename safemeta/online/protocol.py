"""The online meta-RL protocol of Meta-SRL (issue 8) on tabular families, with exact metrics.

    for t = 1 .. T:
        task_t ~ family (train split)                      the sequence, drawn with the run's seed
        phi_t, alpha_t = learner.propose()
        pi_hat_t = CRPO for M steps from phi_t, step alpha_t on task_t (collecting episodes), the
                   iterate its output rule hands out (``output``; default: the latest within d + eta)
        gap_t = J_r*(task_t) - J_r(pi_hat_t),  viol_t = max(0, J_c(pi_hat_t) - d)     (exact: LP optimum)
        learner.observe(pi_hat_t, the transitions)
    TAOG_t = mean_{tau <= t} gap_tau,  TACV_t = mean_{tau <= t} viol_tau

On a family without exact tables the same grids run `safemeta.online.continuous` (gaps estimated against
long-trained references). A grid file (``leaderboards/grids/meta-srl-*.yaml``) names learners x task
distributions x seeds;
``safemeta online GRID`` runs the cells the results store does not hold yet (each finished cell is one record,
`safemeta.online.records`) and writes the board (table + TAOG / TACV curves) into ``leaderboards/meta-srl/``
from the store alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from safemeta import registry
from safemeta.algorithms.meta_srl.base import OnlineContext
from safemeta.algorithms.meta_srl.tabular_crpo import crpo, softmax
from safemeta.config.loader import Validator, read_yaml
from safemeta.config.schema import spec
from safemeta.errors import UserError
from safemeta.rollout.tabular import TabularCMDP, q_values, solve_constrained, state_occupancy
from safemeta.online.records import cell_rows

DEFAULT_STORE = "leaderboards/results/online"


@dataclass
class OnlineConfig:
    learner: str = "online_dualdice"
    learner_cfg: dict[str, Any] = field(default_factory=dict)
    env: str = "tabular-gridworld"
    env_cfg: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    tasks: int = spec(40, ge=1, doc="T, the length of the task sequence")
    steps: int = spec(5, ge=1, doc="M, CRPO steps per task")
    alpha0: float = spec(2e-3, gt=0, doc="CRPO step size of the baselines, and alpha_1 of learners that learn it")
    tolerance: float = spec(0.0, ge=0, doc="CRPO's eta: cost step when J_c > d + eta")
    output: Literal["feasible", "uniform", "last"] = spec(
        "feasible", doc="CRPO's handed-out iterate (scored, and learned from): the latest within d + eta, one "
                        "drawn uniformly from the reward-step iterates N_0 (Algorithm 1), or the last")
    episodes: int = spec(20, ge=1, doc="episodes collected per CRPO step (the data DualDICE sees)")
    horizon: int | None = spec(None, doc="episode length of the collected data (default: the family's)")
    pretrain_steps: int = spec(300, ge=1, doc="CRPO steps of the pretrained baseline on its one task")


def build_online_config(data: dict, source: str = "online config") -> tuple[Any, Any, Any]:
    """Validate ``data``: for a tabular family (one with ``cmdp(task)``) an `OnlineConfig`, the learner's
    config and the family; for any other family a `ContinuousOnlineConfig` (and two Nones)."""
    from safemeta.online.continuous import ContinuousOnlineConfig

    v = Validator({})
    env = data.get("env", OnlineConfig.env)
    family_cls = registry.env.get(env) if isinstance(env, str) else None
    if family_cls is not None and not hasattr(family_cls, "cmdp"):
        cfg = v.build(ContinuousOnlineConfig, data, "")
        v.build(family_cls.Config, cfg.env_cfg, "env_cfg.")
        return cfg, None, None
    cfg: OnlineConfig = v.build(OnlineConfig, data, "")
    learner_cls = registry.online.get(cfg.learner)
    family_cls = registry.env.get(cfg.env)
    learner_cfg = v.build(learner_cls.Config, cfg.learner_cfg, "learner_cfg.")
    family = family_cls(v.build(family_cls.Config, cfg.env_cfg, "env_cfg."))
    return cfg, learner_cfg, family


def run_online(cfg: OnlineConfig, learner_cfg: Any, family: Any, on_task=None) -> list[dict[str, float]]:
    """One task sequence; returns one row per task (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    learner_rng, crpo_rng = np.random.default_rng([cfg.seed, 1]), np.random.default_rng([cfg.seed, 2])
    probe = family.cmdp(family.sample(1, "train", np.random.default_rng(0))[0])
    horizon = cfg.horizon or family.horizon
    d = family.cost_limit_for("train")

    def pretrain(r: np.random.Generator) -> np.ndarray:
        cmdp = family.cmdp(family.sample(1, "train", r)[0])
        return crpo(cmdp, np.zeros((cmdp.n_states, cmdp.n_actions)), cfg.alpha0, cfg.pretrain_steps, d,
                    cfg.tolerance, 1, 1, r, cfg.output).logits

    ctx = OnlineContext(probe.n_states, probe.n_actions, probe.gamma, cfg.steps, cfg.alpha0, learner_rng, pretrain)
    learner = registry.online.get(cfg.learner)(learner_cfg, ctx)
    rows: list[dict[str, float]] = []
    gaps, viols = [], []
    for t in range(1, cfg.tasks + 1):
        task = family.sample(1, "train", rng)[0]
        cmdp = family.cmdp(task)
        optimum = solve_constrained(cmdp, d)
        phi, alpha = learner.propose()
        run = crpo(cmdp, phi, alpha, cfg.steps, d, cfg.tolerance, cfg.episodes, horizon, crpo_rng, cfg.output)
        j_r, j_c = run.returns[run.out_index]  # exact returns of the handed-out iterate
        j_r0, j_c0 = run.returns[0]
        gaps.append(optimum.J_r - j_r)
        viols.append(max(0.0, j_c - d))
        if hasattr(learner, "oracle_visitation"):
            learner.oracle_visitation = lambda pi, c=cmdp: state_occupancy(c, pi)
        info = learner.observe(run, phi, alpha)
        row = {"t": t, "gap": gaps[-1], "violation": viols[-1], "taog": float(np.mean(gaps)),
               "tacv": float(np.mean(viols)), "alpha": alpha, "J_r": j_r, "J_c": j_c, "J_r_opt": optimum.J_r,
               "J_r_init": j_r0, "J_c_init": j_c0, "cost_steps": run.cost_steps, "out_index": run.out_index,
               "gap_last": optimum.J_r - run.returns[-1][0], "J_c_last": run.returns[-1][1],
               **{f"learner/{k}": float(v) for k, v in info.items()}}
        if "learner/distance" in row:  # the estimates against the truth (tabular only; the learner never sees it)
            from safemeta.algorithms.meta_srl.tabular_learner import distance_term

            exact = state_occupancy(cmdp, run.policy)
            if getattr(learner, "last_visitation", None) is not None:
                row["learner/visitation_tv"] = 0.5 * float(np.abs(learner.last_visitation - exact).sum())
            row["learner/distance_exact_visitation"] = distance_term(exact, run.policy, phi)
            # D*_t(phi_t): the distance term against the optimum nearest to phi_t, what D_hat_t + eps_t^2 estimates
            near = nearest_optimum(cmdp, optimum.pi, phi)
            row["learner/distance_optimum"] = distance_term(state_occupancy(cmdp, near), near, phi)
        rows.append(row)
        if on_task is not None:
            on_task(row)
    return rows


def nearest_optimum(cmdp: TabularCMDP, pi_star: np.ndarray, phi: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """The optimal policy that the within-task bound's distance term should compare phi with: ``pi_star``
    (an LP optimum, deterministic at every state by its basic solution) with pi_phi at the states where
    Q_r^{pi*}(s, .) and Q_c^{pi*}(s, .) are flat over the actions. There every action has the same returns
    and costs, so by the performance-difference lemma the changed policy has the same J_r and J_c (still
    optimal and feasible), and the LP's arbitrary pick there (log |A| of KL from a uniform phi at the
    absorbing goal of tabular-gridworld, ~90% of the discounted visitation) does not count as distance."""
    qr, qc = q_values(cmdp, pi_star, "r"), q_values(cmdp, pi_star, "c")
    flat = (np.ptp(qr, axis=-1) <= tol * max(1.0, float(np.abs(qr).max()))) & \
           (np.ptp(qc, axis=-1) <= tol * max(1.0, float(np.abs(qc).max())))
    return np.where(flat[:, None], softmax(phi), pi_star)


# -- grids and the board ------------------------------------------------------------------------------

@dataclass
class OnlineGrid:
    name: str
    learners: dict[str, dict]  # label -> {"learner": name, "learner_cfg": {...}}
    settings: dict[str, dict]  # name -> overrides of the base config (e.g. env_cfg.similarity)
    seeds: list[int]
    base: dict
    runs: Path  # caches (the continuous protocol's references)
    out: Path
    path: Path
    store: Path  # the results store holding every finished cell (`safemeta.online.records`)


def _learner_entries(raw: list, path: str | Path) -> dict[str, dict]:
    """``learners:`` items are a registry name or ``{label, learner, learner_cfg, overrides}``: a configured
    variant, ``overrides`` replacing base-config values for it alone (e.g. ``{alpha0: 0.004}``)."""
    out: dict[str, dict] = {}
    for item in raw:
        if isinstance(item, str):
            label, entry = item, {"learner": item}
        elif isinstance(item, dict) and set(item) <= {"label", "learner", "learner_cfg", "overrides"} and "learner" in item:
            label = str(item.get("label", item["learner"]))
            entry = {**dict(item.get("overrides") or {}), "learner": item["learner"],
                     "learner_cfg": dict(item.get("learner_cfg") or {})}
        else:
            raise UserError(f"online grid '{path}': a learners item must be a name or a mapping with keys "
                            f"label, learner, learner_cfg, overrides; got {item!r}.")
        if label in out:
            raise UserError(f"online grid '{path}': learner label '{label}' appears twice.")
        out[label] = entry
    return out


def load_online_grid(path: str | Path) -> OnlineGrid:
    data = read_yaml(path, "online grid file")
    allowed = {"name", "learners", "settings", "seeds", "base", "runs", "out", "store"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(f"online grid '{path}': unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}.")
    for key in ("learners", "settings", "seeds"):
        if not data.get(key):
            raise UserError(f"online grid '{path}': '{key}' must be given and non-empty.")
    grid = OnlineGrid(str(data.get("name", Path(path).stem)), _learner_entries(list(data["learners"]), path),
                      dict(data["settings"]), [int(s) for s in data["seeds"]], dict(data.get("base") or {}),
                      Path(data.get("runs", "runs/online")), Path(data.get("out", "leaderboards/meta-srl")), Path(path),
                      Path(data.get("store", DEFAULT_STORE)))
    for setting in grid.settings:  # validate every cell before running any
        for label in grid.learners:
            build_online_config(_cell(grid, setting, label, grid.seeds[0]), f"online grid '{path}' [{setting}, {label}]")
    return grid


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cell(grid: OnlineGrid, setting: str, label: str, seed: int) -> dict:
    return _merge(_merge(grid.base, grid.settings[setting] or {}), {**grid.learners[label], "seed": seed})


def grid_cell_rows(grid: OnlineGrid, setting: str, label: str, seed: int) -> list[dict]:
    """A finished cell's per-task rows, from the results store (a UserError naming it when missing)."""
    return cell_rows(grid.store, grid.name, setting, label, _cell(grid, setting, label, seed))
