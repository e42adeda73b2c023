"""``safemeta leaderboard``: finished runs -> ``leaderboards/<family>.md`` / ``.csv`` and plots.

Per family and method (algo / inner): return and cost after 0, 1 and K adaptation steps on held-out
tasks, the share of test tasks within the cost limit after K steps, the cumulative cost paid during
meta-training, env steps and wall time. Means with 95% two-level bootstrap intervals over seeds and
tasks (`safemeta.stats`), plus the IQM of the final return. Rows: methods whose mean cost after K
steps is within the limit first, then by mean return after K steps.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from safemeta.config.loader import load_config
from safemeta.config.schema import Config
from safemeta.errors import UserError
from safemeta.stats import Estimate, bootstrap, iqm
from safemeta.tracking import atomic_write_text
from safemeta.trainer import planned_iterations


@dataclass
class SeedRun:
    path: Path
    cfg: Config
    report: dict
    metrics: list[dict]
    info: dict

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


@dataclass
class Method:
    algo: str
    inner: str
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.algo} / {self.inner}"

    def per_task(self, step: int, key: str) -> list[np.ndarray]:
        return [np.asarray(r.report["steps"][step]["per_task"][key], dtype=float) for r in self.runs]

    def per_seed(self, key: str) -> list[np.ndarray]:
        return [np.asarray([r.final.get(key, 0.0)], dtype=float) for r in self.runs]


def load_runs(root: Path) -> list[SeedRun]:
    runs = []
    for report in sorted(root.glob("*/*/meta_test.json")):
        run_dir = report.parent
        try:
            cfg = load_config(run_dir / "config.yaml")
        except UserError:
            continue
        metrics_file = run_dir / "metrics.jsonl"
        metrics = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()] if metrics_file.exists() else []
        info_file = run_dir / "run.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        runs.append(SeedRun(run_dir, cfg, json.loads(report.read_text()), metrics, info))
    return runs


def group(runs: list[SeedRun]) -> dict[str, dict[tuple[str, str], Method]]:
    """family -> (algo, inner) -> Method, keeping the newest run of each seed."""
    by_family: dict[str, dict[tuple[str, str], Method]] = defaultdict(dict)
    newest: dict[tuple, SeedRun] = {}
    for r in runs:
        key = (r.cfg.env, r.cfg.algo, r.cfg.inner, r.cfg.seed)
        if key not in newest or r.path.name > newest[key].path.name:
            newest[key] = r
    for (env, algo, inner, _), r in sorted(newest.items()):
        by_family[env].setdefault((algo, inner), Method(algo, inner)).runs.append(r)
    return by_family


@dataclass
class Row:
    method: Method
    cols: dict[str, Estimate]
    safe: bool


def score(method: Method, limit: float) -> Row:
    k = len(method.runs[0].report["steps"]) - 1
    cols: dict[str, Estimate] = {}
    for step, name in ((0, "0"), (min(1, k), "1"), (k, "K")):
        cols[f"return@{name}"] = bootstrap(method.per_task(step, "return"))
        cols[f"cost@{name}"] = bootstrap(method.per_task(step, "cost"))
    cols["IQM return@K"] = bootstrap(method.per_task(k, "return"), statistic=iqm)
    cols["within limit@K"] = bootstrap(method.per_task(k, "within_limit"))
    cols["train cost paid"] = bootstrap(method.per_seed("train_cost_paid"))
    cols["env steps"] = bootstrap(method.per_seed("env_steps"))
    cols["wall time (min)"] = bootstrap([x / 60 for x in method.per_seed("wall_time")])
    return Row(method, cols, cols["cost@K"].value <= limit)


def rank(rows: list[Row]) -> list[Row]:
    """Safe methods (mean cost after K steps within the limit) first, then by mean return after K steps."""
    return sorted(rows, key=lambda r: (not r.safe, -r.cols["return@K"].value))


def _budget(methods: list[Method]) -> list[str]:
    lines = set()
    for m in methods:
        for r in m.runs:
            t, e = r.cfg.trainer, r.cfg.eval
            trains = planned_iterations(r.cfg) > 0
            meta = (f"{t.iters} meta-iterations x {t.tasks_per_iter} tasks x K={t.adapt_steps} inner steps, "
                    f"{t.envs_per_task} envs x {t.episodes_per_env} episodes per task and step" if trains
                    else "no meta-training")
            lines.add(f"{m.label}: {meta}; meta-test {e.tasks} tasks x K={e.adapt_steps}, "
                      f"{e.envs_per_task} envs x {e.episodes_per_env} episodes per task and step")
    return sorted(lines)


def grids_for(family: str, runs_root: Path, grids_dir: str | Path | None) -> list[str]:
    """The grid files in ``grids_dir`` that train ``family`` into ``runs_root`` (their ``out``), to cite on the board."""
    if not grids_dir or not Path(grids_dir).is_dir():
        return []
    cited = []
    for path in sorted(Path(grids_dir).glob("*.yaml")):
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if (isinstance(spec, dict) and family in (spec.get("envs") or [])
                and Path(str(spec.get("out", ""))).resolve() == runs_root.resolve()):
            cited.append(str(path))
    return cited


def write_board(family: str, methods: dict[tuple[str, str], Method], out: Path, command: str,
                grids: list[str]) -> Path:
    from safemeta.plots import plot_adaptation, plot_training

    all_methods = list(methods.values())
    first = all_methods[0].runs[0]
    limit = float(first.report["cost_limit"])
    ks = {len(r.report["steps"]) - 1 for m in all_methods for r in m.runs}
    if len(ks) != 1:
        raise UserError(f"Runs of '{family}' were meta-tested with different K ({sorted(ks)}); re-run them alike.")
    k = ks.pop()
    rows = rank([score(m, limit) for m in all_methods])
    out.mkdir(parents=True, exist_ok=True)
    adapt_png = plot_adaptation(family, all_methods, limit, out / f"{family}-adaptation.png")
    train_png = plot_training(family, all_methods, out / f"{family}-training.png")
    names = list(rows[0].cols)
    commits = sorted({r.info.get("commit", "unknown") for m in all_methods for r in m.runs})
    md = [f"# {family}", "",
          f"Meta-test on held-out tasks (split `test`), K = {k} adaptation steps with each method's inner solver; "
          f"cost limit d = {limit:g} at test. Means over seeds and tasks with 95% bootstrap intervals "
          "(two-level: seeds, then tasks); `within limit@K` is the share of test tasks whose mean episode cost "
          "after K steps is <= d. Rows: methods within the limit after K steps first (marked safe), then by "
          "return after K steps.", "",
          "| rank | method | safe | seeds | " + " | ".join(names) + " |",
          "|---|---|---|---|" + "---|" * len(names)]
    for i, row in enumerate(rows, 1):
        cells = [row.cols[n].fmt(0 if n == "env steps" else 2) for n in names]
        md.append(f"| {i} | {row.method.label} | {'yes' if row.safe else 'no'} | {len(row.method.runs)} | "
                  + " | ".join(cells) + " |")
    md += ["", f"![adaptation curves]({adapt_png.name})", "", f"![meta-training curves]({train_png.name})", "",
           "## How this board was made", "", "```", *[f"safemeta bench {g}" for g in grids], command, "```", "",
           "Budgets:", "", *[f"- {b}" for b in _budget(all_methods)], "",
           f"Commit(s) of the runs: {', '.join(commits)}. Runs: `{first.path.parent.parent}`.", ""]
    board = out / f"{family}.md"
    atomic_write_text(board, "\n".join(md))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "method", "algo", "inner", "safe", "seeds"] +
               [f"{n} {part}" for n in names for part in ("mean", "low", "high")])
    for i, row in enumerate(rows, 1):
        w.writerow([i, row.method.label, row.method.algo, row.method.inner, row.safe, len(row.method.runs)] +
                   [f"{x:.6g}" for n in names for x in (row.cols[n].value, row.cols[n].low, row.cols[n].high)])
    atomic_write_text(out / f"{family}.csv", buf.getvalue())
    return board


INDEX_START, INDEX_END = "<!-- boards:start (written by safemeta leaderboard) -->", "<!-- boards:end -->"


def write_index(out: Path, boards: list[Path]) -> None:
    """The table of boards in ``out/README.md``, between markers: what people wrote around it is kept."""
    existing = sorted({p.stem for p in out.glob("*.csv") if p.with_suffix(".md").exists()} | {b.stem for b in boards})
    block = [INDEX_START, "| family | board | table |", "|---|---|---|"]
    block += [f"| {name} | [{name}.md]({name}.md) | [{name}.csv]({name}.csv) |" for name in existing]
    block = "\n".join(block + [INDEX_END])
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if INDEX_START in text and INDEX_END in text:
        head, rest = text.split(INDEX_START, 1)
        text = head + block + rest.split(INDEX_END, 1)[1]
    elif text:  # a README without the markers: the table goes after its title line, nothing is dropped
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{block}\n{body}"
    else:
        text = ("# Leaderboards\n\nGenerated by `safemeta leaderboard` from finished runs (each board says the grid, "
                "the command, the budgets and the commit that produced it). Grids live in [grids/](grids/); "
                f"re-running a grid only trains what is missing.\n\n{block}\n")
    atomic_write_text(readme, text)


def make_leaderboards(runs_root: str | Path, out: str | Path, families: list[str] | None, command: str,
                      grids_dir: str | Path | None = None) -> list[Path]:
    root, out = Path(runs_root), Path(out)
    if not root.is_dir():
        raise UserError(f"The runs folder '{root}' does not exist.")
    by_family = group(load_runs(root))
    if families:
        missing = [f for f in families if f not in by_family]
        if missing:
            raise UserError(f"No finished runs of {', '.join(missing)} under '{root}'. "
                            f"Families with runs: {', '.join(sorted(by_family)) or '(none)'}.")
        by_family = {f: by_family[f] for f in families}
    if not by_family:
        raise UserError(f"No finished runs (with meta_test.json) under '{root}'.")
    boards = []
    for family, methods in sorted(by_family.items()):
        boards.append(write_board(family, methods, out, command, grids_for(family, root, grids_dir)))
    write_index(out, boards)
    return boards
