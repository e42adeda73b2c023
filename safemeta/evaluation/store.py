"""The results store (DESIGN.md "Results store"): one compact record per finished grid cell, kept in the repository.

    <store>/<algo>-<inner>-<env>/s<seed>-<key>.json.gz

A record holds what a board needs from a run and nothing else (never checkpoints): the resolved config, the
run's provenance (command, version, commit), every per-iteration metrics row, the meta-test report and every
view's report. ``key`` is a digest of the resolved config without the keys that cannot change a result (``out``,
``log``, the sections of solvers, updaters and families it does not use), so a cell with other settings is
another record; a record is found by its config *loaded* (keys added
since it was written take their defaults, as for a run directory), so a new setting does not orphan the store,
while a changed default that changes results needs its records re-run (delete them). The record carries ``digest``, the SHA-256 of its
own canonical JSON: a truncated file fails to decompress or parse, an edited one fails the digest, and either is
named in the error, never used. Records are written atomically (a temporary file renamed into place, so a killed
writer leaves nothing a reader takes for a record) and gzip-compressed with a zero timestamp, so a record's bytes
depend only on its content.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path

from safemeta.config.loader import config_from_dict, to_dict
from safemeta.config.schema import Config
from safemeta.errors import UserError

FORMAT = 1
SUFFIX = ".json.gz"
IGNORED_KEYS = ("out", "log")  # config keys that cannot change a result


def canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _results_part(cfg: Config) -> dict:
    """The resolved config without what cannot change a result: ``out``, ``log``, and the settings of inner
    solvers, outer updaters and families the run does not use (a preset or overlay may carry several)."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in IGNORED_KEYS}
    for section, active in (("inner_cfg", cfg.inner), ("outer_cfg", cfg.outer), ("env_cfg", cfg.env)):
        data[section] = {active: data[section].get(active)}
    return data


def config_key(cfg: Config) -> str:
    """12 hex digits identifying a resolved config up to the keys that cannot change its results."""
    return hashlib.sha256(canonical(_results_part(cfg))).hexdigest()[:12]


def record_path(store: Path, cfg: Config) -> Path:
    return Path(store) / cfg.cell_name / f"s{cfg.seed}-{config_key(cfg)}{SUFFIX}"


def _read_json(path: Path):
    return json.loads(path.read_text())


def build_record(run_dir: Path, cfg: Config) -> dict:
    """The record of a finished run directory (``meta_test.json`` present)."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    metrics = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()] if metrics_file.exists() else []
    views = {p.stem: _read_json(p) for p in sorted((run_dir / "views").glob("*.json"))}
    info = _read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
    body = {"format": FORMAT, "key": config_key(cfg), "config": to_dict(cfg), "run": info, "metrics": metrics,
            "meta_test": _read_json(run_dir / "meta_test.json"), "views": views}
    return seal(body)


def seal(body: dict) -> dict:
    """``body`` with its ``digest`` (the SHA-256 of its canonical JSON) added."""
    return {**body, "digest": hashlib.sha256(canonical(body)).hexdigest()}


def write_atomic(path: Path, record: dict) -> Path:
    """Write a sealed record to ``path`` gzip-compressed and atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(canonical(record), mtime=0)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(store: Path, run_dir: Path, cfg: Config) -> Path:
    """Write (or replace) the record of ``run_dir`` atomically; returns its path."""
    path = write_atomic(record_path(store, cfg), build_record(run_dir, cfg))
    for older, _ in _same_cell(store, cfg):  # the same cell under the file name of an older config schema
        if older != path:
            older.unlink()
    return path


def read_record(path: Path) -> dict:
    """A verified record; a UserError naming ``path`` when it is truncated, not a record, or edited."""
    try:
        data = json.loads(gzip.decompress(Path(path).read_bytes()))
    except (OSError, EOFError, ValueError) as e:
        raise UserError(f"Results record '{path}' is truncated or not a record ({type(e).__name__}: {e}); "
                        "delete it and re-run its grid cell.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "digest" not in data:
        raise UserError(f"Results record '{path}' is not a format-{FORMAT} record; delete it and re-run its grid cell.")
    digest = data.pop("digest")
    if hashlib.sha256(canonical(data)).hexdigest() != digest:
        raise UserError(f"Results record '{path}' was edited or corrupted (its digest does not match its content); "
                        "delete it and re-run its grid cell.")
    return data


def _same_cell(store: Path, cfg: Config) -> list[tuple[Path, dict]]:
    """The records of ``cfg``'s cell whose config equals ``cfg`` once loaded: a record written before a config
    key was added loads with that key's default, as a run directory's ``config.yaml`` does (`bench.find_run`), so
    adding a setting does not orphan the store (its file name, from the config of its day, may differ)."""
    folder = Path(store) / cfg.cell_name
    out = []
    for path in sorted(folder.glob(f"s{cfg.seed}-*{SUFFIX}")):
        record = read_record(path)
        if _results_part(record_config(record, path)) == _results_part(cfg):
            out.append((path, record))
    return out


def find_record(store: Path, cfg: Config) -> dict | None:
    """The verified record of ``cfg`` in ``store``, or None when there is none."""
    found = _same_cell(store, cfg)
    return found[-1][1] if found else None


def record_paths(store: Path) -> list[Path]:
    return sorted(Path(store).glob(f"*/*{SUFFIX}"))


def record_config(record: dict, path: Path) -> Config:
    """The record's resolved config, validated like a run directory's ``config.yaml``."""
    return config_from_dict(record["config"], str(path), list(record["run"].get("plugins") or []))


def store_size(store: Path) -> int:
    return sum(p.stat().st_size for p in record_paths(store))
