"""The online protocol's board: TAOG / TACV per learner and task distribution (table + curves).

Reads the cells `safemeta.online.runner.run_online_grid` wrote into the results store (and nothing else, so a
fresh clone rebuilds it) and writes ``<out>/<grid>.md`` and
``<out>/<grid>.png``. Intervals are 95% bootstrap intervals over seeds (each seed one task sequence).

Where a grid runs a learner at several fixed step sizes (a learner whose ``alpha`` column is the same on
every task and seed counts as fixed; e.g. ``{label: averaging-alpha-0.02, learner: averaging, overrides:
{alpha0: 0.02}}``), each setting also gets a step-size section (`step_size_section`): the fixed-alpha sweep
as one table (alpha x learner), the learners that learn alpha beside it, and sentences computed from the
numbers that say what the learned step size buys: against the same learner held at its starting alpha,
held at the swept alpha nearest where it ended, and against the best fixed alpha of the sweep.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from safemeta.online.protocol import OnlineGrid, grid_cell_rows  # noqa: E402
from safemeta.online.records import stack_rows  # noqa: E402
from safemeta.evaluation.stats import bootstrap  # noqa: E402
from safemeta.training.tracking import atomic_write_text  # noqa: E402


def _curves(grid: OnlineGrid, setting: str, learner: str, key: str) -> np.ndarray:
    """``[seeds, T]`` of a per-task column."""
    return stack_rows([grid_cell_rows(grid, setting, learner, s) for s in grid.seeds], key)


def _fixed_alpha(alpha: np.ndarray) -> float | None:
    """The step size of a ``[seeds, T]`` alpha curve that never changes, else None."""
    a = float(alpha[0, 0])
    return a if np.allclose(alpha, a, rtol=1e-9, atol=0.0) else None


def _oracle_alpha_ratio(grid: OnlineGrid, setting: str, learner: str) -> float | None:
    """Median over tasks t and seeds of alpha*_{t+1} / alpha_{t+1}: the step size follow-the-leader (eps = 0, the
    learner's static or dynamic task weights) would pick with the exact distance term D*_tau over the one the
    learner picked (``learner/alpha_next``), where the cells log them (``learner/distance_optimum``,
    ``learner/G``); else None."""
    from dataclasses import fields

    from safemeta.algorithms.meta_srl.tabular_learner import StepSizeLearning, task_weights

    names = {f.name for f in fields(StepSizeLearning)}
    cfg = StepSizeLearning(**{k: v for k, v in grid.learners[learner].get("learner_cfg", {}).items() if k in names})
    ratios = []
    for seed in grid.seeds:
        rows = grid_cell_rows(grid, setting, learner, seed)
        if not rows or not all(k in rows[0] for k in ("learner/distance_optimum", "learner/G", "learner/alpha_next")):
            return None
        d_star = np.array([r["learner/distance_optimum"] for r in rows])
        g2 = np.array([r["learner/G"] ** 2 for r in rows])
        for t in range(1, len(rows) + 1):
            w = task_weights(cfg, t)
            oracle = np.sqrt((w * d_star[:t]).sum() / max(float((w * g2[:t]).sum()), 1e-300))
            ratios.append(oracle / rows[t - 1]["learner/alpha_next"])
    return float(np.median(ratios))


def _fmt_alpha(a: float) -> str:
    return f"{a:.4g}"


def _sweep(grid: OnlineGrid, setting: str) -> tuple[dict[str, dict[float, str]], list[str], dict[str, float | None]]:
    """(sweep, learned, fixed): per learner kind (registry name) with >= 2 fixed step sizes, alpha -> label (the
    labels with a fixed alpha whose learner_cfg sets nothing but the alpha bounds); the labels that learn
    alpha; every label's fixed alpha (None: learned)."""
    fixed = {lrn: _fixed_alpha(_curves(grid, setting, lrn, "alpha")) for lrn in grid.learners}
    sweep: dict[str, dict[float, str]] = {}
    for lrn, a in fixed.items():
        cfg = {k for k in grid.learners[lrn].get("learner_cfg", {}) if k not in ("alpha_min", "alpha_max")}
        if a is not None and not cfg:
            sweep.setdefault(grid.learners[lrn]["learner"], {}).setdefault(a, lrn)
    sweep = {k: dict(sorted(v.items())) for k, v in sweep.items() if len(v) >= 2}
    return sweep, [lrn for lrn, a in fixed.items() if a is None], fixed


def _step_size_detailed(grid: OnlineGrid, learned: list[str]) -> list[str]:
    """The learners of alpha that vary only the step-size learning (no other learner_cfg, no overrides)."""
    keys = {"regret", "forget", "alpha_update", "lr_alpha", "eps"}
    return [lrn for lrn in learned if set(grid.learners[lrn].get("learner_cfg", {})) <= keys
            and set(grid.learners[lrn]) <= {"learner", "learner_cfg"}]


def step_size_section(grid: OnlineGrid, setting: str, t_max: int) -> list[str]:
    """The fixed-alpha sweep and what the learned step size buys (module docstring); [] without a sweep."""
    final = {lrn: _curves(grid, setting, lrn, "taog")[:, -1] for lrn in grid.learners}
    tacv = {lrn: _curves(grid, setting, lrn, "tacv")[:, -1] for lrn in grid.learners}
    alphas = {lrn: _curves(grid, setting, lrn, "alpha") for lrn in grid.learners}
    kind = {lrn: grid.learners[lrn]["learner"] for lrn in grid.learners}
    sweep, learned, fixed = _sweep(grid, setting)
    if not sweep:
        return []
    est = lambda x: bootstrap([x[i:i + 1] for i in range(len(x))])  # noqa: E731
    values = sorted({a for per in sweep.values() for a in per})
    kinds = sorted(sweep, key=lambda k: (not any(kind[lrn] == k for lrn in learned), k))  # learners of alpha first
    name = lambda k: f"{k} (alpha held)" if any(kind[l] == k for l in learned) else k  # noqa: E731,E741
    md = [f"### {setting}: the step size", "",
          f"TAOG_{t_max} [95% interval] (TACV_{t_max}) with alpha held fixed for every task, per learner; "
          "\"alpha held\" marks a learner that otherwise learns alpha (its initialization update unchanged).", "",
          "| alpha | " + " | ".join(name(k) for k in kinds) + " |", "|---|" + "---|" * len(kinds)]
    for a in values:
        cells = []
        for k in kinds:
            lrn = sweep[k].get(a)
            cells.append(f"{est(final[lrn]).fmt()} ({tacv[lrn].mean():.3f})" if lrn else "")
        md.append(f"| {_fmt_alpha(a)} | " + " | ".join(cells) + " |")
    best_lrn = min((lrn for per in sweep.values() for lrn in per.values()), key=lambda lrn: final[lrn].mean())
    best = (best_lrn, fixed[best_lrn], final[best_lrn].mean())
    md.append("")
    if learned:  # the headline, for the first learner of alpha in the grid's order
        lrn = learned[0]
        ours, a0 = final[lrn].mean(), float(alphas[lrn][:, 0].mean())
        start = sweep.get(kind[lrn], {}).get(a0)
        gain = (f"lowers TAOG_{t_max} from {final[start].mean():.2f} (held at its starting alpha {_fmt_alpha(a0)}) to "
                f"{ours:.2f}" if start else f"reaches TAOG_{t_max} {ours:.2f}")
        md.append(f"**What the learned step size buys here:** {lrn}'s learned alpha {gain}; the best fixed alpha of "
                  f"the sweep, known only in hindsight ({best[0]}), reaches {best[2]:.2f}, "
                  f"{'better' if best[2] < ours else 'worse'} by {abs(ours - best[2]):.2f}.")
        md.append("")
    detailed = _step_size_detailed(grid, learned)
    for lrn in detailed:
        k, a0, a_end = kind[lrn], float(alphas[lrn][:, 0].mean()), float(alphas[lrn][:, -1].mean())
        ours = final[lrn].mean()
        md.append(f"- **{lrn}** learns alpha from {_fmt_alpha(a0)} to {_fmt_alpha(a_end)} (alpha_T, mean over seeds) and "
                  f"reaches TAOG_{t_max} {est(final[lrn]).fmt()} (TACV {tacv[lrn].mean():.3f}).")
        same = sweep.get(k, {})
        if a0 in same:
            held = final[same[a0]].mean()
            md.append(f"  - Against itself held at its starting alpha {_fmt_alpha(a0)}: {held:.2f}. The learned step size "
                      f"{'lowers' if ours < held else 'raises'} TAOG by {abs(held - ours):.2f} "
                      f"({'a gain' if ours < held else 'a loss'} over the untuned start).")
        for other in sorted(sweep):
            if other != k and a0 in sweep[other]:
                md.append(f"  - {other} at the same starting alpha {_fmt_alpha(a0)}: "
                          f"{final[sweep[other][a0]].mean():.2f}.")
        if same:
            near = min(same, key=lambda a: abs(np.log(a / a_end)))
            held = final[same[near]].mean()
            md.append(f"  - Held from the first task at the swept alpha nearest where it ends ({_fmt_alpha(near)}): "
                      f"{held:.2f}; learning alpha online instead {'costs' if ours > held else 'saves'} "
                      f"{abs(ours - held):.2f}.")
        md.append(f"  - The best fixed alpha of the sweep, picked in hindsight ({best[0]}, alpha {_fmt_alpha(best[1])}): "
                  f"{best[2]:.2f}; {'it beats the learned step size by' if best[2] < ours else 'the learned step size beats it by'} "
                  f"{abs(ours - best[2]):.2f}, and the learned alpha_T is {a_end / best[1]:.2g}x the best fixed one.")
        ratio = _oracle_alpha_ratio(grid, setting, lrn)
        if ratio is not None:
            md.append(f"  - With the exact distance term D*_t (the optimum nearest to phi_t; logged, never shown to the "
                      f"learner) in place of its estimate D_hat_t + eps_t^2, follow-the-leader on the same bounds would "
                      f"pick a step size a median {ratio:.2f}x the learned one (over tasks and seeds): "
                      + ("what keeps alpha below the best fixed one is the bound itself (its step-size term alpha G^2, "
                         "G the local norm of CRPO's steps), not the estimated distance." if abs(np.log(ratio)) < np.log(1.5)
                         else "the estimated distance moves alpha away from the bound's own choice."))
    others = [lrn for lrn in learned if lrn not in detailed]
    if others:
        md.append("- Other learners of alpha (ablations; rows above): " + "; ".join(
            f"{lrn}: alpha_T {_fmt_alpha(float(alphas[lrn][:, -1].mean()))}, TAOG_{t_max} {final[lrn].mean():.2f}"
            for lrn in others) + ".")
    if len(kinds) >= 2:
        md.append("- Learners at the same alpha (TAOG differences, first minus second, per swept alpha; negative: the "
                  "first is better): " + "; ".join(
            f"{kinds[0]} - {other}: " + ", ".join(
                f"{_fmt_alpha(a)}: {final[sweep[kinds[0]][a]].mean() - final[sweep[other][a]].mean():+.2f}"
                for a in values if a in sweep[kinds[0]] and a in sweep[other])
            for other in kinds[1:]) + ".")
    return md + [""]


def _plot_sweep(ax, grid: OnlineGrid, setting: str, swept, t_max: int) -> None:
    """TAOG_T against alpha: each learner kind held at the swept step sizes (95% intervals), and each learner of
    alpha at its alpha_T."""
    sweep, learned, _ = swept
    for k, per in sweep.items():
        est = [bootstrap([x[i:i + 1] for i in range(len(x))]) for x in
               (_curves(grid, setting, lrn, "taog")[:, -1] for lrn in per.values())]
        mid = np.array([e.value for e in est])
        ax.errorbar(list(per), mid, yerr=[mid - [e.low for e in est], [e.high for e in est] - mid], marker="o",
                    capsize=3, label=f"{k}, alpha held")
    for lrn in _step_size_detailed(grid, learned):
        taog = _curves(grid, setting, lrn, "taog")[:, -1]
        ax.plot([_curves(grid, setting, lrn, "alpha")[:, -1].mean()], [taog.mean()], marker="*", markersize=12,
                linestyle="none", label=f"{lrn} (learned alpha_T)")
    ax.set_xscale("log")
    ticks = sorted({a for per in sweep.values() for a in per})
    ax.set_xticks(ticks, [_fmt_alpha(a) for a in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("alpha (CRPO step size)")
    ax.set_title(f"{setting}: TAOG_{t_max} vs a fixed alpha", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def write_online_board(grid: OnlineGrid, continuous: bool = False) -> Path:
    grid.out.mkdir(parents=True, exist_ok=True)
    measured = ("the optimality gap and constraint violation of the policy CRPO hands out (its output rule: by default "
                "the latest iterate whose own batch estimated its cost within d + eta), *estimated* from a fresh "
                "rollout of it: gap against a per-task reference (CRPO trained for `reference_steps` steps from a "
                "fresh init, its best feasible iterate), violation of the rollout's mean episode cost over d"
                if continuous else
                "the exact optimality gap and constraint violation of the policy CRPO hands out (the protocol's "
                "`output`: by default its latest iterate whose exact J_c is within d + eta) against the LP optimum "
                "of the task's tables")
    md = [f"# Meta-SRL online protocol: {grid.name}", "",
          f"Generated by `safemeta online {grid.path.as_posix()}` (grid file `{grid.path.as_posix()}`). Each seed is "
          f"one task sequence drawn from the family's train split; after each task, {measured}. TAOG_t / TACV_t: "
          "their running means over the first t tasks. Values: mean over seeds [95% bootstrap interval]. TAOG "
          "averages the signed gap: a policy that violates the constraint can earn more than the constrained "
          "optimum (a negative gap), so read TACV beside it.", "",
          f"Base config: `{grid.base}`", ""]
    sweeps = {setting: _sweep(grid, setting) for setting in grid.settings}
    with_sweep = any(sw[0] for sw in sweeps.values())
    n_cols = 3 if with_sweep else 2
    fig, all_axes = plt.subplots(len(grid.settings), n_cols + 1, figsize=(4.6 * n_cols + 3.2, 3.8 * len(grid.settings)),
                                 squeeze=False, gridspec_kw={"width_ratios": [1.0] * n_cols + [0.62]})
    styles = ["-", "--", ":", "-."]
    for row_axes, (setting, overrides) in zip(all_axes, grid.settings.items()):
        row_axes, legend_ax = row_axes[:n_cols], row_axes[n_cols]
        t_max = None
        rows = []
        sweep, learned, fixed = sweeps[setting]
        starts = {float(_curves(grid, setting, lrn, "alpha")[:, 0].mean()) for lrn in learned}
        in_sweep = {lrn: a for per in sweep.values() for a, lrn in per.items()}
        for i, learner in enumerate(grid.learners):
            taog, tacv = _curves(grid, setting, learner, "taog"), _curves(grid, setting, learner, "tacv")
            alpha = _curves(grid, setting, learner, "alpha")
            t_max = taog.shape[1]
            q = max(t_max // 4, 1)
            rows.append((float(taog[:, -1].mean()), learner,
                         f"| {learner} | {bootstrap([taog[:, -1:][i] for i in range(len(taog))]).fmt()} | "
                         f"{bootstrap([tacv[:, -1:][i] for i in range(len(tacv))]).fmt(3)} | "
                         f"{taog[:, q - 1].mean():.2f} | {tacv[:, q - 1].mean():.3f} | "
                         f"{_curves(grid, setting, learner, 'gap')[:, -q:].mean():.2f} | {alpha[:, -1].mean():.2e} |"))
            x = np.arange(1, t_max + 1)
            if learner in in_sweep and starts and in_sweep[learner] not in starts:
                continue  # the sweep's other step sizes are in the step-size panel
            for ax, y in zip(row_axes, (taog, tacv)):
                line, = ax.plot(x, y.mean(0), label=learner, linestyle=styles[(i // 10) % len(styles)])
                ax.fill_between(x, y.min(0), y.max(0), alpha=0.1, color=line.get_color())
        md += [f"## {setting} (`{overrides}`)", "",
               f"| learner | TAOG_{t_max} | TACV_{t_max} | TAOG_{max(t_max // 4, 1)} | TACV_{max(t_max // 4, 1)} | "
               f"mean gap, last {max(t_max // 4, 1)} tasks | alpha_T |", "|---|---|---|---|---|---|---|"]
        md += [r[2] for r in sorted(rows)] + [""]
        md += step_size_section(grid, setting, t_max)
        for ax, name in zip(row_axes, ("TAOG (task-averaged optimality gap)", "TACV (task-averaged violation)")):
            ax.set_title(f"{setting}: {name}", fontsize=10)
            ax.set_xlabel("tasks seen t")
            ax.grid(alpha=0.3)
        legend_ax.axis("off")
        legend_ax.legend(*row_axes[0].get_legend_handles_labels(), fontsize=7, loc="upper left", frameon=False)
        if with_sweep:
            _plot_sweep(row_axes[2], grid, setting, sweeps[setting], t_max)
    fig.tight_layout()
    png = grid.out / f"{grid.name}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    md += [f"![TAOG and TACV vs tasks]({png.name})", ""]
    path = grid.out / f"{grid.name}.md"
    atomic_write_text(path, "\n".join(md))
    return path
