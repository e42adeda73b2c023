"""Command line: ``safemeta train | eval | list`` (mirrors `safemeta.api`).

User errors (bad names, keys, values, paths) print one paragraph and exit with code 2, no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safemeta.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safemeta", description="Safe meta-reinforcement learning.")
    sub = p.add_subparsers(dest="command", required=True)
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a module or .py file that registers inner solvers, outer updaters, algos or envs")

    t = sub.add_parser("train", parents=[plugin], help="meta-train a preset (or resume a run)")
    t.add_argument("--algo", help="preset name (see `safemeta list`)")
    t.add_argument("--inner", help="inner solver name")
    t.add_argument("--env", help="task family name")
    t.add_argument("--seed", type=int)
    t.add_argument("--iters", type=int, help="meta-iterations (trainer.iters)")
    t.add_argument("--out", help="root folder of run directories (default runs/)")
    t.add_argument("--config", help="YAML file layered over the preset and env overlay")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. trainer.iters=20")
    t.add_argument("--executor", choices=["local", "ray"], help="where per-task adaptation runs (trainer.executor)")
    t.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join, e.g. 10.0.0.1:6379 (trainer.ray_address; "
                   "default: start a local Ray)")
    t.add_argument("--shards", type=int, help="split each iteration's tasks into this many shards (trainer.shards)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint")
    t.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline unless log.wandb_mode says)")
    t.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard event files in the run directory "
                   "(log.tensorboard; view with `tensorboard --logdir RUN_DIR/tensorboard`)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", parents=[plugin], help="meta-test a saved run on held-out tasks")
    e.add_argument("run_dir")
    e.add_argument("--tasks", type=int, help="number of held-out tasks (default: the run's eval.tasks)")
    e.add_argument("--adapt-steps", type=int, help="K adaptation steps (default: the run's eval.adapt_steps)")
    e.add_argument("--seed", type=int, help="seed of the held-out task draw (default: the run's eval.seed)")
    e.add_argument("--inner", metavar="SOLVER", help="fine-tune with this inner solver at the family's settings (the "
                   "common-solver view; default: the run's eval.inner, '' = its own solver)")
    e.add_argument("--multipliers", choices=["inherit", "fresh"], help="start the solver's multipliers where "
                   "meta-training left them, or at their defaults (default: the run's eval.multipliers)")
    e.add_argument("--critics", choices=["inherit", "fresh"], help="start the task critics from the carried "
                   "initialization, or a random one (default: the run's eval.critics)")
    e.add_argument("--episodes", type=int, help="fresh evaluation episodes per task after each step (eval.episodes)")
    e.add_argument("--envs-per-task", type=int, help="envs of each fine-tuning step's batch (eval.envs_per_task)")
    e.add_argument("--twin", action="store_true", default=None,
                   help="meta-test on the family's MuJoCo twin with the built-in observations (the reality gap; "
                        "eval.twin)")
    e.add_argument("--view", metavar="NAME", help="save the report as the run's view NAME (RUN_DIR/views/NAME.json), "
                   "which `safemeta leaderboard` renders as its own table")

    b = sub.add_parser("bench", parents=[plugin], help="run a grid of algos x inners x envs x seeds (resumable)")
    b.add_argument("grid", help="grid YAML file (see leaderboards/grids/)")

    lb = sub.add_parser("leaderboard", parents=[plugin], help="turn finished runs into leaderboards and plots")
    lb.add_argument("--runs", default="runs/leaderboard", help="root folder of the runs (default runs/leaderboard)")
    lb.add_argument("--store", metavar="DIR", help="build the boards from this results store (records kept in the "
                    "repository, e.g. leaderboards/results/protocol) instead of --runs")
    lb.add_argument("--out", default="leaderboards", help="where boards go (default leaderboards/)")
    lb.add_argument("--family", action="append", default=None, help="only this family (repeatable)")
    lb.add_argument("--grids", default="leaderboards/grids", help="folder of the grid files named on the boards")

    cl = sub.add_parser("claims", parents=[plugin], help="judge the papers' headline claims from the results store")
    cl.add_argument("--claims", default="leaderboards/claims.yaml", help="claims file (default leaderboards/claims.yaml)")
    cl.add_argument("--out", default="leaderboards/claims.md", help="page to write (default leaderboards/claims.md)")

    on = sub.add_parser("online", parents=[plugin], help="run an online (Meta-SRL) grid on a tabular family and write its board")
    on.add_argument("grid", help="online grid YAML file (see leaderboards/grids/meta-srl-*.yaml)")
    on.add_argument("--no-progress", action="store_true", help="no progress bars")

    rd = sub.add_parser("render", parents=[plugin], help="GIF (and MP4) of a run's policy on held-out tasks, "
                        "before and after adaptation")
    rd.add_argument("run_dir")
    rd.add_argument("--tasks", type=int, nargs="+", default=[0, 1], metavar="I",
                    help="indices into the held-out draw, one row each (default: 0 1)")
    rd.add_argument("--adapt-steps", type=int, help="K adaptation steps (default: the run's eval.adapt_steps)")
    rd.add_argument("--seed", type=int, help="seed of the held-out draw, the adaptation and the episode shown "
                    "(default: the run's eval.seed, the meta-test's tasks)")
    rd.add_argument("--out", help="GIF path (default RUN_DIR/render.gif; the MP4 goes beside it); an existing file "
                    "is kept and the new one gets a suffix (render-2.gif) unless --force")
    rd.add_argument("--force", action="store_true", help="overwrite --out (and its .mp4)")
    rd.add_argument("--steps", type=int, help="episode steps shown (default: the family's horizon, at most 400)")
    rd.add_argument("--every", type=int, help="a frame every this many steps (default: 1 up to 100 steps, else 2)")
    rd.add_argument("--fps", type=float, help="frames per second (default: frames / 10, within 5..20)")
    rd.add_argument("--no-mp4", action="store_true", help="write the GIF only")

    ls = sub.add_parser("list", parents=[plugin], help="list registered algos, inner solvers, outer updaters and envs")
    ls.add_argument("what", nargs="?", choices=sorted(_LISTS), help="only this registry (envs: with task ranges)")
    return p


def _user_layers(args: argparse.Namespace) -> list[tuple[str, dict]]:
    from safemeta.config.loader import parse_set, read_yaml

    layers = []
    if args.config:
        layers.append((args.config, read_yaml(args.config)))
    flags: dict = {}
    for key in ("algo", "inner", "env", "seed", "out"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    trainer = {k: v for k, v in (("iters", args.iters), ("executor", args.executor),
                                 ("ray_address", args.ray_address), ("shards", args.shards)) if v is not None}
    if args.ray_address is not None and args.executor is None:
        trainer["executor"] = "ray"
    if trainer:
        flags["trainer"] = trainer
    if args.wandb or args.tensorboard:
        flags["log"] = {**({"wandb": True} if args.wandb else {}), **({"tensorboard": True} if args.tensorboard else {})}
    if args.no_progress:
        flags.setdefault("log", {})["progress"] = False
    if flags:
        layers.append(("command line", flags))
    if args.set:
        layers.append(("--set", parse_set(args.set)))
    return layers


def cmd_train(args: argparse.Namespace) -> None:
    import safemeta

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in ("algo", "inner", "env", "seed", "out", "config", "set", "shards")
                 if getattr(args, k) not in (None, [])]
        if given:
            raise UserError(f"--resume continues a run with its saved config; drop {', '.join(given)} "
                            "(only --iters may extend it, and --executor / --ray-address move it).")
        executor = args.executor or ("ray" if args.ray_address else None)
        safemeta.resume(args.resume, args.iters, executor=executor, ray_address=args.ray_address)
        return
    cfg = safemeta.resolve_config(_user_layers(args))
    safemeta.train(cfg)


def cmd_eval(args: argparse.Namespace) -> None:
    from safemeta.api import Run, console
    from safemeta.evaluation.meta_test import describe_protocol, save_view
    from safemeta.training.tracking import atomic_write_text

    for flag, low in (("tasks", 1), ("adapt_steps", 0), ("episodes", 1), ("envs_per_task", 1)):
        if getattr(args, flag) is not None and getattr(args, flag) < low:
            raise UserError(f"--{flag.replace('_', '-')} must be >= {low}, got {getattr(args, flag)}.")
    run = Run.load(args.run_dir)
    report = run.meta_test(args.tasks, args.adapt_steps, args.seed, inner=args.inner, multipliers=args.multipliers,
                           critics=args.critics, episodes=args.episodes, envs_per_task=args.envs_per_task,
                           twin=args.twin)
    report["iteration"] = run.trainer.iteration
    spec = report["spec"]
    if args.view:
        out = save_view(Path(args.run_dir), args.view, report)
    else:
        default_view = (spec["inner"], spec["multipliers"], spec["critics"]) == ("", "inherit", "inherit")
        view = "" if default_view else f"-{spec['inner'] or 'own'}-{spec['multipliers']}-{spec['critics']}"
        view += "-twin" if spec["twin"] else ""
        out = Path(args.run_dir) / (f"eval-it{run.trainer.iteration}-n{spec['tasks']}-k{spec['adapt_steps']}"
                                    f"-s{spec['seed']}{view}.json")
        atomic_write_text(out, json.dumps(report, indent=1))
    rows = ["step,task,return,cost,within_limit,cost_paid"] + [
        f"{st['step']},{i},{r},{c},{w},{p}" for st in report["steps"]
        for i, (r, c, w, p) in enumerate(zip(st["per_task"]["return"], st["per_task"]["cost"],
                                             st["per_task"]["within_limit"], st["per_task"]["cost_paid"]))]
    atomic_write_text(out.with_suffix(".csv"), "\n".join(rows) + "\n")
    console.print(describe_protocol(report["protocol"]))
    for step in report["steps"]:
        console.print(f"step {step['step']}: return {step['return_mean']:.3f}  cost {step['cost_mean']:.3f}  "
                      f"over limit {step['violation_rate']:.0%}  cost paid while adapting {step['cost_paid_mean']:.1f}")
    console.print(f"wrote {out}")


def cmd_render(args: argparse.Namespace) -> None:
    from safemeta.api import console
    from safemeta.evaluation.render import mp4_unavailable, render

    paths = render(args.run_dir, tasks=args.tasks, adapt_steps=args.adapt_steps, seed=args.seed, out=args.out,
                   force=args.force, steps=args.steps, every=args.every, fps=args.fps, mp4=not args.no_mp4)
    asked = Path(args.out) if args.out else Path(args.run_dir) / "render.gif"
    if paths[0] != asked:
        console.print(f"{asked} exists: kept it and wrote {paths[0].name} (--force overwrites)")
    for path in paths:
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if not args.no_mp4 and (why := mp4_unavailable()):
        console.print(why)


_LISTS = {"algos": "algo", "inners": "inner", "outers": "outer", "envs": "env", "learners": "online"}


def cmd_bench(args: argparse.Namespace) -> int:
    from safemeta.bench import run_grid

    return 1 if run_grid(args.grid) else 0


def cmd_online(args: argparse.Namespace) -> None:
    from safemeta.online.runner import run_online_grid

    run_online_grid(args.grid, progress=not args.no_progress)


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from safemeta.api import console
    from safemeta.evaluation.leaderboard import make_leaderboards

    command = " ".join(["safemeta", *args.argv])
    root = args.store or args.runs
    for board in make_leaderboards(root, args.out, args.family, command.strip(), args.grids, store=bool(args.store)):
        console.print(f"wrote {board}")


def cmd_claims(args: argparse.Namespace) -> None:
    from safemeta.api import console
    from safemeta.evaluation.claims import write_claims

    console.print(f"wrote {write_claims(args.claims, args.out, ' '.join(['safemeta', *args.argv]).strip())}")


def cmd_list(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from safemeta import registry
    from safemeta.rollout.task import split_ranges

    console = Console() if sys.stdout.isatty() else Console(width=160)
    kinds = [_LISTS[args.what]] if args.what else list(_LISTS.values())
    for kind in kinds:
        reg = getattr(registry, kind)
        table = Table(title=reg.kind, title_justify="left")
        table.add_column("name", no_wrap=True)
        for col in ("description", "from") + (("train", "test") if kind == "env" else ()):
            table.add_column(col)
        for entry in reg.entries():
            row = [entry.name, entry.description, entry.source]
            if kind == "env":
                cfg = entry.obj.Config()
                for split in ("train", "test"):
                    row.append("\n".join(f"{k} in [{_fmt(lo)}, {_fmt(hi)}]" for k, (lo, hi) in split_ranges(cfg, split).items())
                               or "(one distribution)")
            table.add_row(*row)
        console.print(table)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from safemeta.registry import load_plugin

        for spec in args.plugin:
            load_plugin(spec)
        commands = {"train": cmd_train, "eval": cmd_eval, "list": cmd_list, "bench": cmd_bench, "claims": cmd_claims,
                    "render": cmd_render, "leaderboard": cmd_leaderboard, "online": cmd_online}
        rc = commands[args.command](args)
    except UserError as e:
        print(f"safemeta {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("safemeta: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
