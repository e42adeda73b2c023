"""``safemeta online GRID``: run the grid's cells that have not run yet (each writes ``<runs>/<grid>/<setting>/
<learner>-s<seed>.csv``), then write its board (`safemeta.online.board`)."""
from __future__ import annotations

from pathlib import Path

from safemeta.online.board import write_online_board
from safemeta.online.protocol import _cell, build_online_config, cell_path, load_online_grid, run_online, write_rows
from safemeta.training.tracking import console


def run_online_grid(path: str | Path, progress: bool = True) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    grid = load_online_grid(path)
    cells = [(s, lrn, seed) for s in grid.settings for lrn in grid.learners for seed in grid.seeds]
    todo = [c for c in cells if not cell_path(grid, *c).exists()]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not progress) as bar:
        cells_bar = bar.add_task(f"grid {grid.name}", total=len(todo))
        for setting, learner, seed in todo:
            data = _cell(grid, setting, learner, seed)
            cfg, learner_cfg, family = build_online_config(data)
            task_bar = bar.add_task(f"{setting} {learner} s{seed}", total=cfg.tasks)
            tick = lambda _r, tb=task_bar: bar.advance(tb)  # noqa: E731
            if family is None:  # a continuous family: references cached per setting and seed
                from safemeta.online.continuous import run_online_continuous

                cache = grid.runs / grid.name / setting / f"reference-s{seed}.json"
                rows = run_online_continuous(cfg, cache, on_task=tick)
            else:
                rows = run_online(cfg, learner_cfg, family, on_task=tick)
            write_rows(cell_path(grid, setting, learner, seed), rows, data)
            bar.remove_task(task_bar)
            bar.advance(cells_bar)
    console.print(f"grid {grid.name}: {len(cells)} cells, {len(todo)} run, {len(cells) - len(todo)} already there")
    board = write_online_board(grid, continuous=build_online_config(_cell(grid, *cells[0]))[2] is None)
    console.print(f"wrote {board}")
    return board
