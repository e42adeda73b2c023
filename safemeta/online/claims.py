"""Meta-SRL's claim judged from an online grid's records (`safemeta claims`, metric ``taog_tacv``).

Meta-SRL (Khattar et al. 2024) bounds the task-averaged optimality gap TAOG_T = (1/T) sum_t gap_t and constraint
violation TACV_T = (1/T) sum_t viol_t of the policies CRPO hands out after M steps from the learned
initialization (its Theorem 1 / Corollary: both shrink as T grows and as the tasks grow more similar, i.e. as
the distance D* between the tasks' optima shrinks), and its experiments put them below FAL, averaging,
pretrained and random initializations. From the records of the claim's grid, per setting, over seeds (95%
bootstrap intervals shown, point estimates compared):

- ``tasks``: the subject's TAOG and TACV at t = T are below their values at t = T/4, in every setting;
- ``similarity``: the subject's TAOG_T and TACV_T are lower in the high-similarity setting than in the low one;
- ``baselines``: the subject's TAOG_T and TACV_T are below every rival's, in every setting.

Verdict: ``reproduced`` when every check holds, ``partly`` when some do, ``not reproduced`` when none does,
``pending`` while a cell has fewer seeds in the store than the claim needs (the partial numbers shown).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safemeta.errors import UserError
from safemeta.evaluation.stats import Estimate, bootstrap
from safemeta.online.protocol import OnlineGrid, _cell, load_online_grid
from safemeta.online.records import find_cell, stack_rows

RULE = ("TAOG_T and TACV_T (the running means of the handed-out policies' optimality gap and constraint "
        "violation over a sequence of T tasks) fall with T and with task similarity and sit below every "
        "baseline's (its Theorem 1 and experiments)")


@dataclass
class OnlineJudged:
    table: list[str]  # markdown lines
    checks: list[tuple[str, str, bool]]  # check, what was compared, holds
    verdict: str
    seeds: int
    minutes: float  # mean wall minutes per cell of the subject


def _records(grid: OnlineGrid, setting: str, label: str) -> list[dict]:
    """The store's records of a learner's cells in a setting (seeds without a record left out)."""
    found = (find_cell(grid.store, grid.name, setting, label, _cell(grid, setting, label, s)) for s in grid.seeds)
    return [r for r in found if r is not None]


def _at(curve: np.ndarray, t: int) -> Estimate:
    return bootstrap([curve[i, t - 1:t] for i in range(len(curve))])


def judge_online(grid_file: str, subject: str, rivals: list[str], similarity: dict, seeds: int,
                 also: list[str] = ()) -> OnlineJudged:
    """The checks and table of an online claim; ``also``: learners shown below the judged rows (a trace, e.g. an
    ablation of the subject), not judged."""
    grid = load_online_grid(grid_file)
    missing = [x for x in [subject, *rivals, *also] if x not in grid.learners]
    bad = [s for s in similarity.values() if s not in grid.settings]
    if missing or bad or set(similarity) != {"high", "low"}:
        raise UserError(f"Online claim on '{grid_file}': learners {missing or 'ok'}, settings {bad or 'ok'} "
                        f"(similarity needs keys high and low naming settings of {', '.join(grid.settings)}; "
                        f"learners of the grid: {', '.join(grid.learners)}).")
    table, checks, at_t, n_seeds, minutes = [], [], {}, [], []
    for setting in grid.settings:
        rows = []
        for label in [subject, *rivals, *also]:
            records = _records(grid, setting, label)
            if label == subject:
                minutes += [r["run"].get("wall_time", 0.0) / 60 for r in records]
            runs = [r["rows"] for r in records]
            taog, tacv = stack_rows(runs, "taog"), stack_rows(runs, "tacv")
            if label not in also:
                n_seeds.append(len(taog))
            if not len(taog):
                rows.append(f"| {setting} | {label} | 0 | (not in the store yet) | | | |")
                continue
            t = taog.shape[1]
            q = max(t // 4, 1)
            at_t[setting, label] = (_at(taog, t), _at(tacv, t), _at(taog, q), _at(tacv, q), t, q)
            a, c, aq, cq = at_t[setting, label][:4]
            tag = " (subject)" if label == subject else " (trace, not judged)" if label in also else ""
            rows.append(f"| {setting} | {label}{tag} | {len(taog)} | "
                        f"{a.fmt(2)} | {c.fmt(3)} | {aq.value:.2f} | {cq.value:.3f} |")
        table += rows
    complete = all((s, x) in at_t for s in grid.settings for x in [subject, *rivals])
    t, q = (next(iter(at_t.values()))[4:] if at_t else ("T", "T/4"))
    head = [f"| setting | learner | seeds | TAOG_{t} | TACV_{t} | TAOG_{q} | TACV_{q} |", "|---|---|---|---|---|---|---|"]
    if complete:
        for setting in grid.settings:
            a, c, aq, cq = at_t[setting, subject][:4]
            checks.append(("tasks", f"{setting}: TAOG {aq.value:.2f} -> {a.value:.2f}, TACV {cq.value:.3f} -> "
                                    f"{c.value:.3f} (t = {q} -> {t})", a.value < aq.value and c.value < cq.value))
        hi, lo = at_t[similarity["high"], subject], at_t[similarity["low"], subject]
        checks.append(("similarity", f"TAOG_{t} {hi[0].value:.2f} (high) vs {lo[0].value:.2f} (low), TACV_{t} "
                                     f"{hi[1].value:.3f} vs {lo[1].value:.3f}",
                       hi[0].value < lo[0].value and hi[1].value < lo[1].value))
        for setting in grid.settings:
            a, c = at_t[setting, subject][:2]
            worse = [r for r in rivals if not (a.value < at_t[setting, r][0].value and c.value < at_t[setting, r][1].value)]
            checks.append(("baselines", f"{setting}: below every rival on both" if not worse else
                           f"{setting}: not below {', '.join(worse)} on both", not worse))
    have = min(n_seeds) if n_seeds else 0
    if have < seeds or not complete:
        verdict = f"pending ({have} of {seeds} seeds in the store)"
    else:
        kinds = {k: all(h for kk, _, h in checks if kk == k) for k in ("tasks", "similarity", "baselines")}
        verdict = ("reproduced" if all(kinds.values()) else "partly" if any(kinds.values()) else "not reproduced")
        verdict += "" if all(kinds.values()) else f" (holds: {', '.join(k for k, v in kinds.items() if v) or 'none'})"
    return OnlineJudged(head + table, checks, verdict, have, float(np.mean(minutes)) if minutes else 0.0)
