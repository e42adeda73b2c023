"""``safemeta online GRID``: run the grid's cells the results store does not hold yet (each finished cell is
written there at once as one record, `safemeta.online.records`), then write its board (`safemeta.online.board`)
from the store."""
from __future__ import annotations

import time
from pathlib import Path

from safemeta.online.board import write_online_board
from safemeta.online.protocol import _cell, build_online_config, load_online_grid, run_online
from safemeta.online.records import find_cell, write_cell
from safemeta.training.run_dir import run_info
from safemeta.training.tracking import console


def run_online_grid(path: str | Path, progress: bool = True) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    grid = load_online_grid(path)
    cells = [(s, lrn, seed) for s in grid.settings for lrn in grid.learners for seed in grid.seeds]
    todo = [c for c in cells if find_cell(grid.store, grid.name, c[0], c[1], _cell(grid, *c)) is None]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not progress) as bar:
        cells_bar = bar.add_task(f"grid {grid.name}", total=len(todo))
        for setting, learner, seed in todo:
            data = _cell(grid, setting, learner, seed)
            cfg, learner_cfg, family = build_online_config(data)
            task_bar = bar.add_task(f"{setting} {learner} s{seed}", total=cfg.tasks)
            tick = lambda _r, tb=task_bar: bar.advance(tb)  # noqa: E731
            start = time.perf_counter()
            if family is None:  # a continuous family: references cached per setting and seed
                from safemeta.online.continuous import run_online_continuous

                cache = grid.runs / grid.name / setting / f"reference-s{seed}.json"
                rows = run_online_continuous(cfg, cache, on_task=tick)
            else:
                rows = run_online(cfg, learner_cfg, family, on_task=tick)
            info = {**run_info(), "wall_time": time.perf_counter() - start}
            write_cell(grid.store, grid.name, setting, learner, data, rows, info)
            bar.remove_task(task_bar)
            bar.advance(cells_bar)
    console.print(f"grid {grid.name}: {len(cells)} cells, {len(todo)} run, {len(cells) - len(todo)} already there")
    board = write_online_board(grid, continuous=build_online_config(_cell(grid, *cells[0]))[2] is None)
    console.print(f"wrote {board}")
    return board
