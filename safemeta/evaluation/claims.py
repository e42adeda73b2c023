"""``safemeta claims``: the papers' headline claims judged from the results store -> ``leaderboards/claims.md``.

A claims file (``leaderboards/claims.yaml``) names, per claim: the paper and its statement, the family, the
grid that produces its cells, the view of the meta-test it is judged in (``method``: each method with its own
solver; or a grid view such as ``common-trpolag``), the paper's metric (`safemeta.evaluation.leaderboard.VERDICTS`),
the subject method, its rivals, and the seeds the claim needs. From the store's records alone:

- every method's value of the metric with a 95% two-level bootstrap interval (seeds, then tasks): the mean
  cost after K steps (``mean_cost``), or the largest of the per-step mean costs (``cost_every_step``), and the
  return after K steps beside it;
- the verdict: ``reproduced`` when the subject meets the limit and no rival does, ``partly`` when the subject
  meets it and a rival does too, or when no method meets it but the subject is closest; ``not reproduced``
  otherwise; ``pending`` while fewer seeds than the claim needs are in the store (the partial numbers shown).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from safemeta.config.loader import read_yaml
from safemeta.errors import UserError
from safemeta.evaluation.leaderboard import MAIN, VERDICTS, Method, group, load_store
from safemeta.evaluation.meta_test import describe_protocol
from safemeta.evaluation.stats import Estimate, bootstrap
from safemeta.training.tracking import atomic_write_text

if TYPE_CHECKING:
    from safemeta.online.claims import OnlineJudged

CLAIM_KEYS = {"id", "paper", "statement", "family", "grid", "view", "metric", "subject", "rivals", "seeds"}
# picture(_command): a `safemeta render` GIF of the subject (path relative to the page); finding: the traced cause
# where a claim does not (fully) reproduce, with the commands that showed it (written by whoever traced it)
OPTIONAL_KEYS = {"picture", "picture_command", "finding"}
# Meta-SRL's claim is judged on an online grid (`safemeta.online.claims`): no meta-test view; ``similarity`` names
# the grid's high- and low-similarity settings
ONLINE_METRIC = "taog_tacv"
ONLINE_KEYS = CLAIM_KEYS - {"view"} | {"similarity"}
ONLINE_OPTIONAL = {"also"}  # learners shown as a trace below the judged rows


@dataclass
class Claim:
    id: str
    paper: str
    statement: str
    family: str
    grid: list[str]  # the grid file(s) whose cells the claim reads (a file or a list in claims.yaml)
    view: str
    metric: str
    subject: str
    rivals: list[str]
    seeds: int
    picture: str = ""
    picture_command: str = ""
    finding: str = ""
    similarity: dict | None = None  # online claims: {high: setting, low: setting}
    also: list[str] | None = None  # online claims: learners shown as a trace, not judged


def load_claims(path: str | Path) -> tuple[Path, list[Claim]]:
    spec = read_yaml(path, "claims file")
    if not spec.get("store") or not isinstance(spec.get("claims"), list):
        raise UserError(f"Claims file '{path}' needs 'store' (a results store) and a list 'claims'.")
    claims = []
    for i, item in enumerate(spec["claims"]):
        keys = ONLINE_KEYS if item.get("metric") == ONLINE_METRIC else CLAIM_KEYS
        optional = OPTIONAL_KEYS | (ONLINE_OPTIONAL if keys is ONLINE_KEYS else set())
        missing, unknown = keys - set(item), set(item) - keys - optional
        if missing or unknown:
            raise UserError(f"Claim {i + 1} of '{path}': " + (f"missing {', '.join(sorted(missing))}; " if missing else "")
                            + (f"unknown {', '.join(sorted(unknown))}; " if unknown else "")
                            + f"the keys are {', '.join(sorted(keys))}.")
        if item["metric"] not in VERDICTS and item["metric"] != ONLINE_METRIC:
            raise UserError(f"Claim '{item['id']}' of '{path}': unknown metric '{item['metric']}'. "
                            f"Valid: {', '.join([*VERDICTS, ONLINE_METRIC])}.")
        grids = item["grid"] if isinstance(item["grid"], list) else [item["grid"]]
        claims.append(Claim(**{"view": "", **item, "grid": [str(g) for g in grids], "rivals": list(item["rivals"]),
                               "seeds": int(item["seeds"])}))
    return Path(spec["store"]), claims


def metric_value(method: Method, metric: str) -> Estimate:
    """The paper's metric with its 95% interval: mean cost after K steps, or the worst step's mean cost."""
    steps = len(method.runs[0].report["steps"])
    if metric == "mean_cost":
        return bootstrap(method.per_task(steps - 1, "cost"))
    per_step = [bootstrap(method.per_task(k, "cost"), reps=500) for k in range(steps)]
    return max(per_step, key=lambda e: e.value)


@dataclass
class Judged:
    claim: Claim
    rows: list[tuple[str, int, Estimate, Estimate, bool]]  # label, seeds, metric, return@K, meets d
    minutes: dict[str, float]  # label -> mean meta-training wall minutes per seed
    limit: float
    protocol: dict
    verdict: str


def judge(claim: Claim, by_family: dict) -> Judged:
    methods = {m.label: m.in_view(claim.view if claim.view != "method" else MAIN)
               for m in by_family.get(claim.family, {}).values()}
    rows, limit, protocol, minutes = [], None, {}, {}
    for label in [claim.subject, *claim.rivals]:
        m = methods.get(label)
        if m is None or not m.runs:
            rows.append((label, 0, None, None, False))
            continue
        limit = float(m.runs[0].report["cost_limit"])
        protocol = m.runs[0].report.get("protocol") or {}
        value = metric_value(m, claim.metric)
        ret = bootstrap(m.per_task(len(m.runs[0].report["steps"]) - 1, "return"))
        rows.append((label, len(m.runs), value, ret, value.value <= limit))
        minutes[label] = sum(r.final.get("wall_time", 0.0) for r in m.runs) / 60 / len(m.runs)
    seeds = min(r[1] for r in rows)
    subject_meets = rows[0][4]
    rivals_meet = [r[4] for r in rows[1:]]
    if seeds < claim.seeds:
        verdict = f"pending ({seeds} of {claim.seeds} seeds in the store)"
    elif subject_meets and not any(rivals_meet):
        verdict = "reproduced"
    elif subject_meets or (rows[0][2] is not None and all(r[2] is None or rows[0][2].value <= r[2].value
                                                             for r in rows[1:])):
        verdict = "partly"
    else:
        verdict = "not reproduced"
    return Judged(claim, rows, minutes, limit if limit is not None else float("nan"), protocol, verdict)


def write_claims(claims_file: str | Path, out: str | Path, command: str) -> Path:
    store, claims = load_claims(claims_file)
    if not Path(store).is_dir():
        raise UserError(f"The results store '{store}' of '{claims_file}' does not exist.")
    by_family = group(load_store(Path(store)))
    intro = ["# Claims", "",
          "Each published method's headline claim, judged by the paper's own metric on the papers' meta-test "
          "protocol (README, \"Meta-test protocol\"), from the results store alone "
          f"(`{store}`; every number regenerates with the command at the bottom). Values: mean over seeds and "
          "tasks with 95% two-level bootstrap intervals; `meets d` compares the point estimate with the test "
          "cost limit. Verdicts: `reproduced` (the subject meets d, no rival does), `partly` (the subject meets "
          "d and so does a rival, or no method meets d but the subject comes closest), `not reproduced`, "
          "`pending` (fewer seeds than the claim's budget are in the store yet; partial numbers shown). "
          "`train min / seed` is the time to claim: meta-training wall minutes per seed on the machine that ran "
          "it (1 torch thread; the records say which commit; other jobs may have shared its cores), the "
          "meta-test not included. Meta-SRL's claims are judged on its online protocol instead, from the online "
          "grids' records (`leaderboards/results/online`).", ""]
    summary = ["| claim | family | verdict | time to claim (wall min / seed) |", "|---|---|---|---|"]
    md: list[str] = []
    for c in claims:
        if c.metric == ONLINE_METRIC:
            section, j = online_section(c, command)
            md += section
            summary.append(f"| {c.id} | {c.family} | {j.verdict} | {f'{j.minutes:.2f}' if j.minutes else ''} |")
            continue
        j = judge(c, by_family)
        metric = VERDICTS[c.metric]
        view = f" ({c.view} view)" if c.view != "method" else ""
        summary.append(f"| {c.id} | {c.family}{view} | {j.verdict} | "
                       f"{f'{sum(j.minutes.values()):.1f}' if j.minutes else ''} |")
        md += [f"## {c.paper}: {c.family}{view}", "", f"**Claim.** {c.statement}", "",
               f"**Metric** ({metric.paper}): {metric.rule}. **Verdict: {j.verdict}.**", "",
               f"**Protocol** (view `{c.view}`): {describe_protocol(j.protocol) if j.protocol else '(no runs yet)'}", "",
               "| method | seeds | metric" + (f" (d = {j.limit:g})" if np.isfinite(j.limit) else "")
               + " | return@K | meets d | train min / seed |",
               "|---|---|---|---|---|---|"]
        for label, seeds, value, ret, meets in j.rows:
            if value is None:
                md.append(f"| {label} | 0 | (not in the store yet) | | | |")
            else:
                md.append(f"| {label}{' (subject)' if label == c.subject else ''} | {seeds} | {value.fmt(2)} | "
                          f"{ret.fmt(2)} | {'yes' if meets else 'no'} | {j.minutes[label]:.1f} |")
        if c.finding:
            md += ["", f"**Finding.** {c.finding.strip()}", ""]
        if c.picture:
            md += [f"![{c.subject} on held-out tasks: the meta-policy (left) and the policy after K steps (right)]"
                   f"({c.picture})", "", f"Picture: `{c.picture_command}`." if c.picture_command else "", ""]
        md += ["", "```", *[f"safemeta bench {g}" for g in c.grid], f"safemeta leaderboard --store {store} --out "
               f"{Path(out).parent / 'claims'}", command, "```", ""]
        for g in c.grid:
            grid = yaml.safe_load(Path(g).read_text()) if Path(g).is_file() else {}
            if grid.get("set"):
                md += [(f"Grid settings of `{Path(g).name}`: " if len(c.grid) > 1 else "Grid settings: ")
                       + f"`{grid['set']}`" + (f", per algo `{grid['algo_set']}`" if grid.get("algo_set") else ""), ""]
    md = [*intro, *summary, "", "Time to claim: the meta-training wall minutes per seed of all the claim's rows "
          "together (meta-tests not included), or for a Meta-SRL claim the minutes of the subject's task sequence.",
          "", *md]
    path = Path(out)
    atomic_write_text(path, "\n".join(md))
    return path


def online_section(c: Claim, command: str) -> tuple[list[str], "OnlineJudged"]:
    """A Meta-SRL claim's section (its checks and table from the online grid's records) and its judgement."""
    from safemeta.online.claims import RULE, judge_online

    j = judge_online(c.grid[0], c.subject, c.rivals, c.similarity or {}, c.seeds, c.also or [])
    md = [f"## {c.paper}: {c.family}", "", f"**Claim.** {c.statement}", "",
          f"**Metric** ({c.paper}): {RULE}. **Verdict: {j.verdict}.**", "",
          f"**Protocol:** Meta-SRL's online protocol (README, \"Meta-SRL's online protocol\"), grid `{c.grid[0]}`: "
          "each seed one sequence of tasks; after each task the policy CRPO hands out is scored. Values: mean over "
          f"seeds [95% bootstrap interval]. " + (f"Time to claim: {j.minutes:.2f} wall minutes per sequence of the "
          "subject (1 torch thread; other jobs may have shared its cores)." if j.minutes else ""), "", *j.table, ""]
    if j.checks:
        md += ["| check | compared | holds |", "|---|---|---|",
               *[f"| {k} | {what} | {'yes' if ok else 'no'} |" for k, what, ok in j.checks], ""]
    if c.finding:
        md += [f"**Finding.** {c.finding.strip()}", ""]
    return md + ["```", f"safemeta online {c.grid[0]}", command, "```", ""], j
