"""``safemeta leaderboard``: finished runs -> ``leaderboards/<family>.md`` / ``.csv`` and plots.

A board has one table per *view* of the meta-test (README "Meta-test protocol"): the method as a whole (each
run's own ``meta_test.json``: each method fine-tuned by its own solver, or by ``eval.inner`` if the runs set
one) and every view that a grid asked for (``views:`` in the grid file; reports in ``RUN_DIR/views/``, e.g.
every initialization fine-tuned by trpolag: the common-solver view). Each table's header states its protocol,
and every row of a table was meta-tested by the same protocol (checked; a mix is an error).

Per method (algo / inner): return and cost after 0, 1 and K fine-tuning steps on held-out tasks (fresh
evaluation episodes), the share of test tasks within d after K steps, the cost paid while fine-tuning, and
per step the mean cost and return; in the method view also the cost paid during meta-training, env steps
and wall time. Means with 95% two-level bootstrap intervals over seeds and tasks (`safemeta.evaluation.stats`), plus
the IQM of the final return. The verdict column applies the metric of the paper the board tests (grid key
``metric``, `VERDICTS`); rows meeting it first, then by mean return after K steps.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from safemeta.config.loader import load_config, run_plugins
from safemeta.config.schema import Config
from safemeta.errors import UserError
from safemeta.evaluation.meta_test import describe_protocol
from safemeta.evaluation.stats import Estimate, bootstrap, iqm
from safemeta.training.tracking import atomic_write_text
from safemeta.training.trainer import planned_iterations

MAIN = "method"  # the view of each run's own meta_test.json


@dataclass
class SeedRun:
    path: Path
    cfg: Config
    report: dict
    metrics: list[dict]
    info: dict
    views: dict[str, dict] = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}

    def in_view(self, view: str) -> "SeedRun | None":
        """This run with ``report`` = its report of ``view`` (None when it has none)."""
        if view == MAIN:
            return self
        return replace(self, report=self.views[view]) if view in self.views else None


@dataclass
class Method:
    algo: str  # with its variant, if any (``Config.algo_id``: ``c_maml.no-eta``)
    inner: str
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.algo} / {self.inner}"

    def per_task(self, step: int, key: str) -> list[np.ndarray]:
        return [np.asarray(r.report["steps"][step]["per_task"][key], dtype=float) for r in self.runs]

    def per_seed(self, key: str) -> list[np.ndarray]:
        return [np.asarray([r.final.get(key, 0.0)], dtype=float) for r in self.runs]

    def in_view(self, view: str) -> "Method":
        return Method(self.algo, self.inner, [v for r in self.runs if (v := r.in_view(view)) is not None])


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_runs(root: Path) -> list[SeedRun]:
    runs = []
    for report in sorted(root.glob("*/*/meta_test.json")):
        run_dir = report.parent
        try:
            cfg = load_config(run_dir / "config.yaml", run_plugins(run_dir))
        except UserError as e:
            if "can no longer be loaded" in str(e):
                raise  # a run that needs a plugin that moved: named, not left off the board
            continue
        metrics_file = run_dir / "metrics.jsonl"
        metrics = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()] if metrics_file.exists() else []
        info = _read_json(run_dir / "run.json") or {}
        views = {p.stem: v for p in sorted((run_dir / "views").glob("*.json")) if (v := _read_json(p)) is not None}
        runs.append(SeedRun(run_dir, cfg, json.loads(report.read_text()), metrics, info, views))
    return runs


def load_store(store: Path) -> list[SeedRun]:
    """Every record of a results store (`safemeta.evaluation.store`) as a run; a corrupt one is a UserError
    naming it."""
    from safemeta.evaluation.store import read_record, record_config, record_paths

    runs = []
    for path in record_paths(store):
        rec = read_record(path)
        runs.append(SeedRun(path, record_config(rec, path), rec["meta_test"], rec["metrics"], rec["run"], rec["views"]))
    return runs


def _age(r: SeedRun) -> str:
    """Orders two runs of one seed: the start time a run records, else its directory's (timestamped) name."""
    return str(r.info.get("started", "")) + r.path.name


def group(runs: list[SeedRun]) -> dict[str, dict[tuple[str, str], Method]]:
    """family -> (algo, inner) -> Method, keeping the newest run of each seed."""
    by_family: dict[str, dict[tuple[str, str], Method]] = defaultdict(dict)
    newest: dict[tuple, SeedRun] = {}
    for r in runs:
        key = (r.cfg.env, r.cfg.algo_id, r.cfg.inner, r.cfg.seed)
        if key not in newest or _age(r) > _age(newest[key]):
            newest[key] = r
    for (env, algo, inner, _), r in sorted(newest.items()):
        by_family[env].setdefault((algo, inner), Method(algo, inner)).runs.append(r)
    return by_family


@dataclass
class Row:
    method: Method
    cols: dict[str, Estimate]
    per_step: dict[str, list[Estimate]]
    safe: bool = False


@dataclass(frozen=True)
class Verdict:
    paper: str
    rule: str
    meets: Callable[[Row, float], bool]


VERDICTS = {
    "mean_cost": Verdict("Meta-CPO (Cho & Sun, AAAI-24)",
                         "the mean episode cost of the adapted policies after K steps is <= d (the paper judges by "
                         "mean cost against its limit h)",
                         lambda row, d: row.cols["cost@K"].value <= d),
    "cost_every_step": Verdict("C-MAML (Daaboul et al. 2024)",
                               "the mean episode cost is <= d at every fine-tuning step 0..K (its Figs. 4-5 judge the "
                               "cost throughout fine-tuning)",
                               lambda row, d: all(e.value <= d for e in row.per_step["cost"])),
}
DEFAULT_VERDICT = "mean_cost"


def score(method: Method, limit: float, verdict: Verdict = VERDICTS[DEFAULT_VERDICT], training: bool = True) -> Row:
    steps = len(method.runs[0].report["steps"])
    k = steps - 1
    has_paid = "cost_paid" in method.runs[0].report["steps"][0]["per_task"]
    cols: dict[str, Estimate] = {}
    for step, name in ((0, "0"), (min(1, k), "1"), (k, "K")):
        cols[f"return@{name}"] = bootstrap(method.per_task(step, "return"))
        cols[f"cost@{name}"] = bootstrap(method.per_task(step, "cost"))
    cols["IQM return@K"] = bootstrap(method.per_task(k, "return"), statistic=iqm)
    cols["within limit@K"] = bootstrap(method.per_task(k, "within_limit"))
    if has_paid:
        cols["cost paid fine-tuning"] = bootstrap(method.per_task(k, "cost_paid"))
    if training:
        cols["train cost paid"] = bootstrap(method.per_seed("train_cost_paid"))
        cols["env steps"] = bootstrap(method.per_seed("env_steps"))
        cols["wall time (min)"] = bootstrap([x / 60 for x in method.per_seed("wall_time")])
    per_step = {key: [bootstrap(method.per_task(j, key), reps=500) for j in range(steps)] for key in ("return", "cost")}
    row = Row(method, cols, per_step)
    row.safe = verdict.meets(row, limit)
    return row


def rank(rows: list[Row]) -> list[Row]:
    """Rows meeting the board's verdict first, then by mean return after K steps."""
    return sorted(rows, key=lambda r: (not r.safe, -r.cols["return@K"].value))


def _budget(methods: list[Method]) -> list[str]:
    lines = set()
    for m in methods:
        for r in m.runs:
            t = r.cfg.trainer
            trains = planned_iterations(r.cfg) > 0
            meta = (f"{t.iters} meta-iterations x {t.tasks_per_iter} tasks x K={t.adapt_steps} inner steps, "
                    f"{t.envs_per_task} envs x {t.episodes_per_env} episodes per task and step" if trains
                    else "no meta-training")
            env_steps = r.final.get("env_steps")
            lines.add(f"{m.label}: {meta}" + (f" ({int(env_steps):,} env steps)" if env_steps else ""))
    return sorted(lines)


# protocol keys added after records were written, with the value a record without the key means
LATER_PROTOCOL_KEYS = {"twin": ""}  # "": meta-tested on the built-in family


def _protocol_key(report: dict) -> str:
    """What must agree between the rows of one table: everything in the protocol but the per-method inherited
    values and, in the own-solver view, the solver itself; a key of `LATER_PROTOCOL_KEYS` at its default counts
    as absent, so records written before it existed compare with new ones."""
    protocol = dict(report.get("protocol") or {"legacy": True, "adapt_steps": len(report["steps"]) - 1})
    protocol.pop("inherited", None)
    for key, default in LATER_PROTOCOL_KEYS.items():
        if protocol.get(key, default) == default:
            protocol.pop(key, None)
    if protocol.get("solver", {}).get("view") == "own":
        protocol["solver"] = "own"
    return json.dumps(protocol, sort_keys=True)


def check_protocol(family: str, view: str, methods: list[Method]) -> dict:
    """The protocol every run of a table shares (a UserError naming the runs that differ otherwise)."""
    keys: dict[str, list[str]] = defaultdict(list)
    for m in methods:
        for r in m.runs:
            keys[_protocol_key(r.report)].append(f"{m.label} s{r.cfg.seed}")
    if len(keys) > 1:
        groups = "; ".join(f"{', '.join(who)}: {json.loads(k)}" for k, who in keys.items())
        raise UserError(f"Runs of '{family}' (view '{view}') were meta-tested by different protocols, so one table "
                        f"cannot compare them; re-run them alike (`safemeta eval RUN ...`). {groups}")
    return methods[0].runs[0].report.get("protocol") or {}


def grids_for(family: str, runs_root: Path, grids_dir: str | Path | None, key: str = "out") -> list[str]:
    """The grid files in ``grids_dir`` that train ``family`` into ``runs_root`` (their ``out``, or with
    ``key="store"`` their results store), to cite on the board."""
    if not grids_dir or not Path(grids_dir).is_dir():
        return []
    cited = []
    for path in sorted(Path(grids_dir).glob("*.yaml")):
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if (isinstance(spec, dict) and family in (spec.get("envs") or [])
                and spec.get(key) and Path(str(spec[key])).resolve() == runs_root.resolve()):
            cited.append(str(path))
    return cited


def board_verdict(grids: list[str]) -> tuple[str, Verdict]:
    """The verdict metric the cited grids name (``metric:``), else the default; grids that disagree: an error."""
    named = set()
    for g in grids:
        spec = yaml.safe_load(Path(g).read_text()) or {}
        if spec.get("metric"):
            named.add(str(spec["metric"]))
    if len(named) > 1:
        raise UserError(f"The grids of one board name different verdict metrics ({', '.join(sorted(named))}): "
                        f"{', '.join(grids)}.")
    name = named.pop() if named else DEFAULT_VERDICT
    if name not in VERDICTS:
        raise UserError(f"Unknown verdict metric '{name}' in {', '.join(grids)}. Valid: {', '.join(VERDICTS)}.")
    return name, VERDICTS[name]


def _table(rows: list[Row], names: list[str]) -> list[str]:
    md = ["| rank | method | meets d | seeds | " + " | ".join(names) + " |", "|---|---|---|---|" + "---|" * len(names)]
    for i, row in enumerate(rows, 1):
        cells = [row.cols[n].fmt(0 if n == "env steps" else 2) for n in names]
        md.append(f"| {i} | {row.method.label} | {'yes' if row.safe else 'no'} | {len(row.method.runs)} | "
                  + " | ".join(cells) + " |")
    return md


def _per_step_table(rows: list[Row], key: str) -> list[str]:
    steps = len(rows[0].per_step[key])
    md = ["| method | " + " | ".join(f"step {j}" for j in range(steps)) + " |", "|---|" + "---|" * steps]
    md += [f"| {row.method.label} | " + " | ".join(e.fmt(1) for e in row.per_step[key]) + " |" for row in rows]
    return md


def write_board(family: str, methods: dict[tuple[str, str], Method], out: Path, command: str,
                grids: list[str]) -> Path:
    from safemeta.evaluation.plots import plot_adaptation, plot_training

    all_methods = list(methods.values())
    first = all_methods[0].runs[0]
    limit = float(first.report["cost_limit"])
    metric, verdict = board_verdict(grids)
    views = [MAIN] + sorted({v for m in all_methods for r in m.runs for v in r.views})
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {family}", "",
          f"Verdict (`meets d`) by the metric of {verdict.paper}: {verdict.rule}; d = {limit:g}, the test cost limit. "
          "Means over seeds and tasks with 95% bootstrap intervals (two-level: seeds, then tasks); returns and costs "
          "are scored on fresh evaluation episodes after each fine-tuning step; `within limit@K` is the share of test "
          "tasks whose mean episode cost after K steps is <= d; `cost paid fine-tuning` is the cost the K fine-tuning "
          "batches themselves paid per task (summed over their episodes). Rows: those meeting d first, then by return "
          "after K steps.", ""]
    csv_rows: list[list] = []
    names_all: list[str] = []
    for view in views:
        in_view = [m for m in (x.in_view(view) for x in all_methods) if m.runs]
        if not in_view:
            continue
        protocol = check_protocol(family, view, in_view)
        rows = rank([score(m, limit, verdict, training=view == MAIN) for m in in_view])
        names = list(rows[0].cols)
        title = ("The method as a whole" if view == MAIN else f"View `{view}`")
        png_name = f"{family}-adaptation.png" if view == MAIN else f"{family}-{view}-adaptation.png"
        png = plot_adaptation(family, [r.method for r in rows], limit, out / png_name,
                              f"{family}: meta-test on held-out tasks ({title.lower()})")
        inherited = sorted({f"{r.method.label}: " + ", ".join(f"{k} = {v:.3g}" for k, v in x.items())
                            for r in rows for run in r.method.runs
                            if (x := (run.report.get("protocol") or {}).get("inherited"))})
        md += [f"## {title}", "", describe_protocol(protocol), ""]
        if inherited:
            md += ["Inherited at the start of fine-tuning (one entry per seed): " + "; ".join(inherited) + ".", ""]
        md += _table(rows, names)
        md += ["", "Mean episode cost per fine-tuning step (95% CI):", "", *_per_step_table(rows, "cost"),
               "", "Mean episode return per fine-tuning step (95% CI):", "", *_per_step_table(rows, "return"),
               "", f"![adaptation curves]({png.name})", ""]
        for i, row in enumerate(rows, 1):
            csv_rows.append([view, i, row.method.label, row.method.algo, row.method.inner, row.safe,
                             len(row.method.runs), {n: row.cols[n] for n in names}])
        names_all += [n for n in names if n not in names_all]
    train_png = plot_training(family, all_methods, out / f"{family}-training.png")
    commits = sorted({r.info.get("commit", "unknown") for m in all_methods for r in m.runs})
    md += ["## Meta-training", "", f"![meta-training curves]({train_png.name})", "",
           "## How this board was made", "", "```", *[f"safemeta bench {g}" for g in grids], command, "```", "",
           "Budgets:", "", *[f"- {b}" for b in _budget(all_methods)], "",
           f"Commit(s) of the runs: {', '.join(commits)}. "
           f"{'Records' if first.path.name.endswith('.json.gz') else 'Runs'}: `{first.path.parent.parent}`.", ""]
    board = out / f"{family}.md"
    atomic_write_text(board, "\n".join(md))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["view", "rank", "method", "algo", "inner", "safe", "seeds"] +
               [f"{n} {part}" for n in names_all for part in ("mean", "low", "high")])
    for view, i, label, algo, inner, safe, seeds, cols in csv_rows:
        w.writerow([view, i, label, algo, inner, safe, seeds] +
                   [f"{x:.6g}" if n in cols else "" for n in names_all
                    for x in ((cols[n].value, cols[n].low, cols[n].high) if n in cols else (0, 0, 0))])
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
                      grids_dir: str | Path | None = None, store: bool = False) -> list[Path]:
    """Boards from the finished runs under ``runs_root``, or with ``store`` from the results store there."""
    root, out = Path(runs_root), Path(out)
    what = "results store" if store else "runs folder"
    if not root.is_dir():
        raise UserError(f"The {what} '{root}' does not exist.")
    by_family = group(load_store(root) if store else load_runs(root))
    if families:
        missing = [f for f in families if f not in by_family]
        if missing:
            raise UserError(f"No finished runs of {', '.join(missing)} under '{root}'. "
                            f"Families with runs: {', '.join(sorted(by_family)) or '(none)'}.")
        by_family = {f: by_family[f] for f in families}
    if not by_family:
        raise UserError(f"No finished runs ({'records' if store else 'with meta_test.json'}) under '{root}'.")
    boards = []
    for family, methods in sorted(by_family.items()):
        grids = grids_for(family, root, grids_dir, "store" if store else "out")
        boards.append(write_board(family, methods, out, command, grids))
    write_index(out, boards)
    return boards
