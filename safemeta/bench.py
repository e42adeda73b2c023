"""Experiment grids: ``safemeta bench GRID.yaml`` runs algos x inners x envs x seeds.

A grid file (see ``leaderboards/grids/``)::

    out: runs/leaderboard            # root of the grid's run directories
    algos: [random, pretrained, fomaml_trpo]
    inners: [default]                # "default" = each preset's own inner solver
    envs: [point-circle]
    seeds: [0, 1, 2]
    set: {trainer.iters: 20}         # overrides for every cell (same syntax as --set)

Each cell's config is resolved like ``safemeta train`` would; a cell whose run directory already holds
the same resolved config is skipped when finished (its ``meta_test.json`` is at the final iteration)
and resumed otherwise, so re-running a grid only does what is missing. A failing cell is reported and
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
from safemeta.errors import UserError
from safemeta.trainer import planned_iterations

GRID_KEYS = {"out", "algos", "inners", "envs", "seeds", "set"}


@dataclass
class Cell:
    algo: str
    inner: str | None
    env: str
    seed: int
    cfg: Config

    @property
    def label(self) -> str:
        return f"{self.algo}/{self.cfg.inner} on {self.env} s{self.seed}"


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
    cells = []
    for algo, inner, env, seed in itertools.product(spec["algos"], spec.get("inners") or ["default"], spec["envs"],
                                                    spec["seeds"]):
        flags: dict = {"algo": algo, "env": env, "seed": seed, "log": {"progress": False}}
        if "out" in spec:
            flags["out"] = str(spec["out"])
        if inner != "default":
            flags["inner"] = inner
        cfg = resolve_config([(str(path), flags), (f"{path} (set)", set_layer)])
        cells.append(Cell(algo, None if inner == "default" else inner, env, int(seed), cfg))
    return cells


def find_run(cfg: Config) -> Path | None:
    """The existing run directory of this exact resolved config, if any (newest first)."""
    group = Path(cfg.out) / f"{cfg.algo}-{cfg.inner}-{cfg.env}"
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
    failed: list[tuple[Cell, str]] = []
    counts = {"skipped": 0, "resumed": 0, "new": 0}
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        grid_bar = progress.add_task(f"grid {Path(path).name}", total=len(cells))
        run_bar = progress.add_task("", total=1)
        for cell in cells:
            progress.update(run_bar, description=cell.label, completed=0, total=max(cell.cfg.trainer.iters, 1))
            tick = lambda row: progress.update(run_bar, completed=row["iter"])  # noqa: E731
            existing = find_run(cell.cfg)
            try:
                if existing is not None and is_finished(existing, cell.cfg):
                    counts["skipped"] += 1
                elif existing is not None:
                    counts["resumed"] += 1
                    safemeta.resume(existing, on_iteration=tick)
                else:
                    counts["new"] += 1
                    safemeta.train(cell.cfg, on_iteration=tick)
            except Exception as e:  # report, go on with the grid
                failed.append((cell, f"{type(e).__name__}: {e}"))
                console.print(f"[red]failed: {cell.label}: {type(e).__name__}: {e}")
                console.print(traceback.format_exc(limit=3))
            progress.advance(grid_bar)
    console.print(f"grid {path}: {len(cells)} cells, {counts['new']} trained, {counts['resumed']} resumed, "
                  f"{counts['skipped']} already finished, {len(failed)} failed")
    for cell, err in failed:
        console.print(f"  FAILED {cell.label}: {err}")
    return len(failed)
