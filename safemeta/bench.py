"""Experiment grids: ``safemeta bench GRID.yaml`` runs algos x inners x envs x seeds.

A grid file (see ``leaderboards/grids/``)::

    out: runs/leaderboard            # root of the grid's run directories
    algos: [random, pretrained, fomaml_trpo]
    inners: [default]                # "default" = each preset's own inner solver
    envs: [point-circle]
    seeds: [0, 1, 2]
    set: {trainer.iters: 20}         # overrides for every cell (same syntax as --set)
    algo_set:                        # overrides for one algo's cells (e.g. the same env-step budget)
      pretrained: {trainer.iters: 120}
    views:                           # extra meta-tests of every finished cell (README "Meta-test protocol")
      common-trpolag: {inner: trpolag, multipliers: fresh}
    metric: cost_every_step          # the verdict of the paper the board tests (safemeta.evaluation.leaderboard.VERDICTS)

Each cell's config is resolved like ``safemeta train`` would; a cell whose run directory already holds
the same resolved config is skipped when finished (its ``meta_test.json`` is at the final iteration)
and resumed otherwise, so re-running a grid only does what is missing. Each finished cell then gets every
view's report (``RUN_DIR/views/<name>.json``: a meta-test of the same trained run with the view's ``eval``
fields replaced), unless it already has it for the run's final iteration and the same spec. With ``store``,
each finished cell's record is written into the results store (`safemeta.evaluation.store`), and a cell whose
record is there (with every view) is skipped without its run directory: the store carries a grid across
machines, a fresh clone included. A failing cell is reported and
the grid goes on; the command exits non-zero at the end if any cell failed.
"""
from __future__ import annotations

import itertools
import json
import traceback
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from safemeta.config.loader import load_config, nest, read_yaml, resolve_config
from safemeta.config.schema import Config
from safemeta.evaluation.store import write_record
from safemeta.errors import UserError
from safemeta.training.trainer import planned_iterations

GRID_KEYS = {"out", "algos", "inners", "envs", "seeds", "set", "algo_set", "views", "metric", "store"}
VIEW_KEYS = ("tasks", "adapt_steps", "envs_per_task", "episodes_per_env", "episodes", "inner", "multipliers", "critics",
             "seed", "twin")


@dataclass
class Cell:
    algo: str
    inner: str | None
    env: str
    seed: int
    cfg: Config

    @property
    def label(self) -> str:
        return f"{self.cfg.algo_id}/{self.cfg.inner} on {self.env} s{self.seed}"


def load_grid(path: str | Path) -> list[Cell]:
    spec = read_yaml(path, "grid file")
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise UserError(f"Unknown key(s) {', '.join(sorted(unknown))} in grid file '{path}'. "
                        f"Valid keys: {', '.join(sorted(GRID_KEYS))}.")
    for key in ("algos", "envs", "seeds"):
        if not isinstance(spec.get(key), list) or not spec[key]:
            raise UserError(f"Grid file '{path}' needs a non-empty list '{key}'.")
    overrides = spec.get("set") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"'set' in grid file '{path}' must map keys to values (e.g. trainer.iters: 20).")
    set_layer = nest(overrides)
    algo_set = spec.get("algo_set") or {}
    if not isinstance(algo_set, dict) or not all(isinstance(v, dict) for v in algo_set.values()):
        raise UserError(f"'algo_set' in grid file '{path}' must map algo names to overrides "
                        "(e.g. pretrained: {trainer.iters: 120}).")
    stray = set(algo_set) - set(spec["algos"])
    if stray:
        raise UserError(f"'algo_set' in grid file '{path}' names {', '.join(sorted(stray))}, not in its algos "
                        f"({', '.join(spec['algos'])}).")
    cells = []
    # seed-major: a grid stopped part-way has whole seeds of every method, not every seed of a few methods
    for seed, env, algo, inner in itertools.product(spec["seeds"], spec["envs"], spec["algos"],
                                                    spec.get("inners") or ["default"]):
        flags: dict = {"algo": algo, "env": env, "seed": seed, "log": {"progress": False}}
        if "out" in spec:
            flags["out"] = str(spec["out"])
        if inner != "default":
            flags["inner"] = inner
        cfg = resolve_config([(str(path), flags), (f"{path} (set)", set_layer),
                              (f"{path} (algo_set.{algo})", nest(algo_set.get(algo) or {}))])
        cells.append(Cell(algo, None if inner == "default" else inner, env, int(seed), cfg))
    return cells


def load_views(path: str | Path) -> dict[str, dict]:
    """The grid's ``views``: name -> eval fields it replaces (checked: names, keys and values)."""
    from safemeta.config.schema import EvalConfig
    from safemeta.evaluation.meta_test import MetaTestSpec, view_path

    views = read_yaml(path, "grid file").get("views") or {}
    if not isinstance(views, dict):
        raise UserError(f"'views' in grid file '{path}' must map view names to eval settings "
                        "(e.g. common-trpolag: {inner: trpolag, multipliers: fresh}).")
    out = {}
    for name, fields in views.items():
        view_path(Path("."), str(name))  # a valid name
        fields = dict(fields or {})
        unknown = set(fields) - set(VIEW_KEYS)
        if unknown:
            raise UserError(f"View '{name}' in grid file '{path}' sets unknown key(s) {', '.join(sorted(unknown))}. "
                            f"Valid keys: {', '.join(VIEW_KEYS)}.")
        resolve_config([(f"{path} (views.{name})", {"algo": "random", "eval": fields})])  # values checked
        MetaTestSpec.from_config(EvalConfig(), **fields)
        out[str(name)] = fields
    return out


def ensure_views(run_dir: Path, cfg: Config, views: dict[str, dict]) -> int:
    """Meta-test a finished run in every view it lacks (or has for another iteration or spec); returns how many
    reports were written."""
    from safemeta.api import Run
    from safemeta.evaluation.meta_test import MetaTestSpec, same_spec, save_view, view_path

    missing = {}
    for name, fields in views.items():
        want = MetaTestSpec.from_config(cfg.eval, **fields)
        try:
            have = json.loads(view_path(run_dir, name).read_text())
        except (OSError, json.JSONDecodeError):
            have = {}
        if have.get("iteration") != planned_iterations(cfg) or not same_spec(have.get("spec"), want):
            missing[name] = fields
    if not missing:
        return 0
    run = Run.load(run_dir)
    for name, fields in missing.items():
        report = run.meta_test(**fields)
        report["iteration"] = run.trainer.iteration
        save_view(run_dir, name, report)
    return len(missing)


def in_store(store: Path, cfg: Config, views: dict[str, dict]) -> bool:
    """The cell's record is in ``store``, at the final iteration, with every view of the grid at its spec (a
    corrupt record raises a UserError naming it)."""
    from safemeta.evaluation.meta_test import MetaTestSpec, same_spec
    from safemeta.evaluation.store import find_record

    record = find_record(store, cfg)
    if record is None or record["meta_test"].get("iteration") != planned_iterations(cfg):
        return False
    return all(same_spec(record["views"].get(name, {}).get("spec"), MetaTestSpec.from_config(cfg.eval, **fields))
               for name, fields in views.items())


def find_run(cfg: Config) -> Path | None:
    """The existing run directory of this exact resolved config, if any (newest first)."""
    group = Path(cfg.out) / cfg.cell_name
    for run_dir in sorted(group.glob(f"*-s{cfg.seed}"), reverse=True):
        try:
            if (run_dir / "config.yaml").is_file() and load_config(run_dir / "config.yaml") == cfg:
                return run_dir
        except UserError:
            continue
    return None


def is_finished(run_dir: Path, cfg: Config) -> bool:
    report = run_dir / "meta_test.json"
    if not report.is_file():
        return False
    try:
        done = json.loads(report.read_text()).get("iteration")
    except json.JSONDecodeError:
        return False
    return done == planned_iterations(cfg)


def run_grid(path: str | Path) -> int:
    """Run every cell of the grid; return the number of failed cells."""
    import safemeta
    from safemeta.api import console

    cells = load_grid(path)
    views = load_views(path)
    store = read_yaml(path, "grid file").get("store")
    failed: list[tuple[Cell, str]] = []
    counts = {"skipped": 0, "resumed": 0, "new": 0, "stored": 0}
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        grid_bar = progress.add_task(f"grid {Path(path).name}", total=len(cells))
        run_bar = progress.add_task("", total=1)
        for cell in cells:
            progress.update(run_bar, description=cell.label, completed=0, total=max(cell.cfg.trainer.iters, 1))
            tick = lambda row: progress.update(run_bar, completed=row["iter"])  # noqa: E731
            try:
                if store and in_store(Path(store), cell.cfg, views):
                    counts["stored"] += 1
                    progress.advance(grid_bar)
                    continue
                existing = find_run(cell.cfg)
                if existing is not None and is_finished(existing, cell.cfg):
                    counts["skipped"] += 1
                elif existing is not None:
                    counts["resumed"] += 1
                    safemeta.resume(existing, on_iteration=tick)
                else:
                    counts["new"] += 1
                    safemeta.train(cell.cfg, on_iteration=tick)
                if views:
                    progress.update(run_bar, description=f"{cell.label}: views")
                    ensure_views(find_run(cell.cfg), cell.cfg, views)
                if store:
                    write_record(Path(store), find_run(cell.cfg), cell.cfg)
            except Exception as e:  # report, go on with the grid
                failed.append((cell, f"{type(e).__name__}: {e}"))
                console.print(f"[red]failed: {cell.label}: {type(e).__name__}: {e}")
                console.print(traceback.format_exc(limit=3))
            progress.advance(grid_bar)
    console.print(f"grid {path}: {len(cells)} cells, {counts['new']} trained, {counts['resumed']} resumed, "
                  f"{counts['skipped']} already finished" + (f", {counts['stored']} already in the store {store}"
                                                             if store else "") + f", {len(failed)} failed")
    for cell, err in failed:
        console.print(f"  FAILED {cell.label}: {err}")
    return len(failed)
