"""The online grids' cells in the results store, as `safemeta.evaluation.store` keeps the bench grids' cells.

    <store>/<grid>/<setting>/<label>-s<seed>-<key>.json.gz

One record per finished cell (one learner on one task sequence): the cell's config as the grid gives it (base,
setting and learner entry merged, with the seed), the run's provenance (command, version, commit, wall
seconds) and every per-task row (gap, violation, TAOG_t, TACV_t, alpha_t, the learner's logged terms). ``key``
digests the cell's config, so a cell whose settings change is another record. Records are sealed and written
atomically by the store's own functions: a killed writer leaves no record, a truncated or edited one is named
and never used. The board and the claims page read these records alone (no ``runs/``); the continuous
protocol's reference cache stays in ``runs/`` (a cache: rebuilt when missing).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from safemeta.errors import UserError
from safemeta.evaluation.store import FORMAT, SUFFIX, canonical, read_record, seal, write_atomic


def cell_key(data: dict) -> str:
    """12 hex digits identifying a cell's config."""
    return hashlib.sha256(canonical(data)).hexdigest()[:12]


def cell_record_path(store: Path, grid: str, setting: str, label: str, data: dict) -> Path:
    return Path(store) / grid / setting / f"{label}-s{data['seed']}-{cell_key(data)}{SUFFIX}"


def write_cell(store: Path, grid: str, setting: str, label: str, data: dict, rows: list[dict], info: dict) -> Path:
    """Seal and write one finished cell's record; returns its path."""
    body = {"format": FORMAT, "kind": "online", "key": cell_key(data), "cell": data, "run": info, "rows": rows}
    return write_atomic(cell_record_path(store, grid, setting, label, data), seal(body))


def find_cell(store: Path, grid: str, setting: str, label: str, data: dict) -> dict | None:
    """The verified record of the cell whose config is ``data`` (its ``rows``, its ``run``), or None when the store
    has none."""
    path = cell_record_path(store, grid, setting, label, data)
    if not path.exists():
        return None
    record = read_record(path)
    if record.get("kind") != "online" or record.get("cell") != data:
        raise UserError(f"Results record '{path}' does not hold the cell its name says (another config under the "
                        "same key); delete it and re-run its grid cell.")
    return record


def cell_rows(store: Path, grid: str, setting: str, label: str, data: dict) -> list[dict]:
    """The rows of a cell the board needs; a UserError naming the missing record and the command otherwise."""
    record = find_cell(store, grid, setting, label, data)
    if record is None:
        raise UserError(f"The results store has no record of cell [{setting}, {label}, seed {data['seed']}] of grid "
                        f"'{grid}' ({cell_record_path(store, grid, setting, label, data)}); run "
                        "`safemeta online GRID` to run it.")
    return record["rows"]


def stack_rows(runs: list[list[dict]], key: str) -> np.ndarray:
    """``[len(runs), T]`` of a per-task column over runs (each a cell's rows), T the shortest run's length."""
    if not runs:
        return np.zeros((0, 0))
    n = min(len(r) for r in runs)
    return np.array([[row[key] for row in r[:n]] for r in runs])
