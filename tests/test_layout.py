"""The package's architecture: no module imports one that imports it back (any import, at the top or inside a
function), and the layers point one way."""
import ast
import json
from pathlib import Path

import safemeta

import safemeta.algorithms
import safemeta.envs

PACKAGES = {"safemeta": Path(safemeta.__file__).parent, "safemeta.algorithms": Path(safemeta.algorithms.__path__[0]),
            "safemeta.envs": Path(safemeta.envs.__path__[0])}


def modules() -> dict[str, Path]:
    """Every module of the distribution by dotted name (algorithms/ and envs/ are mapped into safemeta)."""
    out = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the distribution's modules it imports, anywhere in its body (``from a.b import c`` counts a.b,
    and a.b.c when that is a module); the bare package ``safemeta`` is the namespace, not an edge."""
    names = modules()
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in names and t != name and t != "safemeta"}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circles():
    cycle = find_cycle({k: v for k, v in import_graph().items()})
    assert cycle is None, " -> ".join(cycle)


LAYERS = [  # lowest first: a module may import its own layer and the layers below it
    ("foundation", ("safemeta.errors", "safemeta.registry", "safemeta.config", "safemeta.presets",
                    "safemeta.compat.safety_gym", "safemeta.configs")),
    ("rollout substrate", ("safemeta.rollout", "safemeta.envs")),
    ("inner solvers", ("safemeta.algorithms.inner",)),
    ("training", ("safemeta.training", "safemeta.algorithms.outer", "safemeta.algorithms.meta_srl",
                  "safemeta.algorithms")),
    ("evaluation, online protocol", ("safemeta.evaluation", "safemeta.online", "safemeta.compat.omnisafe_env")),
    ("interface", ("safemeta.api", "safemeta.cli", "safemeta.bench", "safemeta.task", "safemeta.vec_cmdp",
                   "safemeta.compat", "safemeta")),
]


def layer_of(module: str) -> int:
    """The first layer one of whose prefixes ``module`` is (most specific prefixes are listed first)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (rank, len(p))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def test_dependencies_point_down_the_layers():
    """interface -> evaluation / online -> training (trainer, outer updaters, learners) -> inner solvers ->
    rollout substrate (and envs) -> foundation (errors, registry, config): never upwards."""
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, deps in import_graph().items() for b in deps if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


OLD_PATHS_PLUGIN = '''
from dataclasses import dataclass

import torch

from safemeta.registry import register_env, register_inner, register_outer
from safemeta.config.schema import spec
from safemeta.task import Task, TaskFamily
from safemeta.vec_cmdp import BatchedCMDP
from safemeta.algorithms.inner.base import InnerSolver
from safemeta.algorithms.inner.trpo import TRPO
from safemeta.algorithms.outer.base import OuterUpdater
from safemeta.algorithms.outer.fomaml import FOMAML


class LineEnv(BatchedCMDP):
    """A point on a line rewarded for moving right; cost 1 beyond x = 1."""
    obs_dim, act_dim = 1, 1

    def __init__(self, n_tasks, envs_per_task, device, seed):
        super().__init__(n_tasks, envs_per_task, 10, device, seed)
        self.x = torch.zeros(self.num_envs, device=self.device)

    def _reset_envs(self, mask):
        self.x = torch.where(mask, torch.zeros_like(self.x), self.x)

    def _observe(self):
        return self.x.unsqueeze(-1)

    def _transition(self, act):
        step = 0.2 * act[:, 0].clamp(-1, 1)
        self.x = self.x + step
        return step, (self.x > 1).float(), torch.zeros_like(self.x, dtype=torch.bool)


@dataclass
class LineConfig:
    cost_limit: float = spec(2.0, ge=0)


@register_env("old-paths-line", "a line family written against the pre-layout import paths")
class Line(TaskFamily):
    name = "old-paths-line"
    Config = LineConfig
    horizon = 10

    def sample_params(self, split, rng):
        return {"k": float(rng.uniform())}

    def make(self, tasks, envs_per_task, device="cpu", seed=0):
        return LineEnv(len(tasks), envs_per_task, device, seed)


@register_inner("old_paths_trpo", "TRPO subclassed through the old paths")
class OldPathsTRPO(TRPO):
    assert issubclass(TRPO, InnerSolver)


@register_outer("old_paths_fomaml", "FOMAML subclassed through the old paths")
class OldPathsFOMAML(FOMAML):
    assert issubclass(FOMAML, OuterUpdater)
'''


def test_a_plugin_written_against_the_old_paths_loads_and_trains(tmp_path):
    from tests.conftest import run_cli

    plugin = tmp_path / "old_plugin.py"
    plugin.write_text(OLD_PATHS_PLUGIN)
    r = run_cli("train", "--plugin", str(plugin), "--env", "old-paths-line", "--inner", "old_paths_trpo",
                "--set", "outer=old_paths_fomaml", "--iters", "2", "--out", str(tmp_path / "runs"), "--no-progress",
                "--set", "eval.tasks=2", "--set", "eval.adapt_steps=1", "--set", "eval.episodes=2",
                "--set", "trainer.tasks_per_iter=2", "--set", "trainer.envs_per_task=2")
    assert r.returncode == 0, r.stderr
    run_dir = next((tmp_path / "runs").glob("fomaml_trpo-old_paths_trpo-old-paths-line/*"))
    report = json.loads((run_dir / "meta_test.json").read_text())
    assert report["iteration"] == 2 and report["protocol"]["solver"]["name"] == "old_paths_trpo"


def test_the_old_paths_warn_and_name_the_new_one():
    import importlib
    import sys
    import warnings

    for old, new in (("safemeta.task", "safemeta.rollout.task"), ("safemeta.vec_cmdp", "safemeta.rollout.vec_cmdp")):
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
        moved = importlib.import_module(new)
        assert all(getattr(module, name) is getattr(moved, name) for name in dir(moved) if not name.startswith("_"))
