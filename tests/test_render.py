"""`safemeta render`: GIF frames of a run's policies before and after adaptation, drawn from the task's geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest

import safemeta
from safemeta import registry
from safemeta.errors import UserError
from safemeta.evaluation import render as R
from safemeta.rollout.task import Task, TaskFamily
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny-nav run of one meta-iteration (K = 1 in training and at meta-test)."""
    cfg = tiny_config(tmp_path_factory.mktemp("render"), trainer={"iters": 1, "tasks_per_iter": 2},
                      eval={"tasks": 2, "adapt_steps": 1})
    return safemeta.train(cfg)


def read_gif(path):
    import imageio.v3 as iio

    return iio.imread(path, index=None)


def near(pixel, color: str, tol: int = 12) -> bool:
    return bool(np.abs(np.asarray(pixel, dtype=int) - R.rgb(color)).max() <= tol)


def held_out(run, n: int = 2) -> list[Task]:
    return run.trainer.family.sample(n, "test", np.random.default_rng(run.config.eval.seed))


def tiny_nav_geometry(task: Task, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Goal and hazard centre of a tiny-nav task, from its parameters (envs/tiny_nav.py's definition)."""
    a, shift = task.params["angle"], task.params["hazard_shift"]
    goal = cfg.goal_dist * np.array([math.cos(a), math.sin(a)])
    return goal, 0.5 * goal + shift * np.array([-math.sin(a), math.cos(a)])


def test_a_tiny_nav_render_has_the_frames_asked_for_the_geometry_and_different_panels(tiny_run, tmp_path):
    paths = R.render(tiny_run.path, tasks=[0, 1], steps=10, every=2, out=tmp_path / "r.gif")
    assert paths[0] == tmp_path / "r.gif"
    if R.mp4_unavailable() is None:
        assert paths[1] == tmp_path / "r.mp4" and paths[1].stat().st_size > 0
    frames = read_gif(paths[0])
    assert frames.shape == (10 // 2 + 1, 2 * R.PANEL, 2 * R.PANEL, 3)  # steps // every + 1; 2 tasks x 2 panels
    def world(frame, row, col):  # a panel's picture of the world, without its text lines
        return frame[row * R.PANEL + R.HEADER:(row + 1) * R.PANEL, col * R.PANEL:(col + 1) * R.PANEL]

    family, tasks = tiny_run.trainer.family, held_out(tiny_run)
    for row, task in enumerate(tasks):
        # same start: before any step the two panels' worlds are the same picture ...
        assert np.abs(world(frames[0], row, 0).astype(int) - world(frames[0], row, 1)).max() <= 12
        # ... after 10 steps of the meta-policy and of the adapted one they are not (adaptation changed the policy)
        diff = np.abs(world(frames[-1], row, 0).astype(int) - world(frames[-1], row, 1)).max(-1) > 40
        assert diff.sum() > 20, f"task {row}: the before and after panels look the same"
        # at the start, the goal and the hazard are where the task puts them (the layout of a snapshot of the task)
        _, to_pixel = R.snapshot(family, task, seed=tiny_run.config.eval.seed)
        goal, hazard = tiny_nav_geometry(task, family.cfg)
        for col in (0, 1):
            for point, color in ((goal, "goal"), (hazard, "hazard")):
                r, c = to_pixel(*point)
                assert near(frames[0][row * R.PANEL + r, col * R.PANEL + c], color), (row, col, color)


def test_an_existing_output_is_kept_unless_forced(tiny_run, tmp_path):
    out = tmp_path / "keep.gif"
    out.write_bytes(b"not a gif")
    again = R.render(tiny_run.path, tasks=[1], steps=2, every=1, out=out, mp4=False)
    assert again == [tmp_path / "keep-2.gif"] and out.read_bytes() == b"not a gif"
    assert read_gif(again[0]).shape == (3, R.PANEL, 2 * R.PANEL, 3)  # one task: one row
    forced = R.render(tiny_run.path, tasks=[1], steps=2, every=1, out=out, force=True, mp4=False)
    assert forced == [out] and out.read_bytes()[:6] == b"GIF89a"
    with pytest.raises(UserError, match="--out must name a .gif"):
        R.render(tiny_run.path, out=tmp_path / "x.mp4")


# -- one snapshot per family: the pixel at each object is that object's colour --------------------------------

def _family(name: str):
    cls = registry.env.get(name)
    return cls(cls.Config())


def _objects(name: str, family, task: Task) -> list[tuple[np.ndarray, str]]:
    """(world point, colour) pairs a correct drawing of ``task`` must show, computed from the family's own
    layout functions and the task's parameters."""
    p = task.params
    if name in ("point-circle", "car-circle-hazard"):
        wall = p["r_c"] * p["s"]
        out = [(np.array([wall + 0.3, 0.5]), "cost_region"), (np.array([-wall - 0.3, -0.5]), "cost_region"),
               (np.array([0.0, 0.6 * p["r_c"]]), "cell")]  # between the walls, inside the circle: white
        if name == "car-circle-hazard":
            out += [(h, "hazard") for h in family.hazards(p)]
        return out
    if name == "point-button":
        buttons, hazards = family.layout(task)
        return [(h, "hazard") for h in hazards] + [(b, "button|goal") for b in buttons]
    if name.startswith("point-goal"):
        layout = family.layout(task)
        return ([(layout["goal"], "goal")] + [(h, "hazard") for h in layout["hazards"]]
                + [(q, "pillar") for q in layout["pillars"]])
    if name == "tiny-nav":
        goal, hazard = tiny_nav_geometry(task, family.cfg)
        return [(goal, "goal"), (hazard, "hazard")]
    if name == "nav2d-hazard":
        goal = p["distance"] * np.array([math.cos(p["bearing"]), math.sin(p["bearing"])])
        return [(goal, "goal"), (p["hazard_fraction"] * goal, "hazard")]
    if name == "tabular-gridworld":
        n = family.cfg.size
        cell = lambda s: np.array([s % n + 0.5, n - 1 - s // n + 0.5])  # noqa: E731 (row 0 on top)
        return [(cell(p["goal"]), "goal")] + [(cell(s), "hazard") for s in p["costly"]]
    raise AssertionError(name)


HAND_MADE = {
    "point-circle": {"r_c": 1.5, "s": 0.6},
    "car-circle-hazard": {"r_c": 1.0, "n_h": 4, "layout_seed": 5, "s": 0.6},
    "point-button": {"n_b": 3, "n_h": 3, "r_s": 1.8, "layout_seed": 3},
    "point-goal": {"level": 2, "layout_seed": 1_000_003},
    "point-goal-level1": {"level": 1, "layout_seed": 1_000_004},
    "tiny-nav": {"angle": 0.3, "hazard_shift": 0.04},
    "nav2d-hazard": {"bearing": 2.0, "distance": 0.4, "hazard_fraction": 0.5, "hazard_radius": 0.08},
    "tabular-gridworld": {"slip": 0.1, "goal": 23, "costly": [7, 12, 18]},
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_a_snapshot_shows_each_object_of_a_hand_made_task_in_its_colour(name):
    family = _family(name)
    task = Task(name, "test", 0, HAND_MADE[name])
    image, to_pixel = R.snapshot(family, task, seed=1)
    assert image.shape == (R.PANEL, R.PANEL, 3)
    objects = _objects(name, family, task)
    assert len(objects) >= 2
    goals = 0
    for point, colors in objects:
        r, c = to_pixel(*point)
        assert R.HEADER <= r < R.PANEL and 0 <= c < R.PANEL, f"{point} is drawn outside the panel"
        pixel = image[r, c]
        assert any(near(pixel, k, tol=3) for k in colors.split("|")), f"{name}: {colors} at {point}, got {pixel}"
        goals += near(pixel, "goal", tol=3)
    if name == "point-button":  # exactly one button is the goal
        assert goals == 1
    area = R.PANEL * (R.PANEL - R.HEADER)
    for color in ("goal", "hazard"):  # objects are disks, not the whole picture
        share = (np.abs(image[R.HEADER:].astype(int) - R.rgb(color)).max(-1) <= 3).sum() / area
        assert share < 0.35, f"{name}: {color} covers {share:.0%} of the panel"


def test_a_family_it_cannot_draw_is_a_user_error_naming_those_it_can():
    class Blob(TaskFamily):
        name = "blob"

        def sample_params(self, split, rng):
            return {}

        def make(self, tasks, envs_per_task, device="cpu", seed=0):
            raise NotImplementedError

    with pytest.raises(UserError, match="cannot draw the family 'blob'") as err:
        R.drawer_for(Blob(None))
    assert all(n in str(err.value) for n in ("point-circle", "point-goal", "tiny-nav", "nav2d-hazard"))


# -- the sg- families: MuJoCo's GL backend ------------------------------------------------------------------------

@pytest.fixture
def sg_run_dir(tmp_path):
    """A run directory of an sg- family with only its config (render checks GL before loading anything)."""
    from safemeta.config.loader import save_config

    cfg = tiny_config(tmp_path, env="sg-point-circle")
    run_dir = tmp_path / "sg-run"
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def test_an_sg_family_without_a_gl_backend_is_a_user_error_naming_what_is_missing(sg_run_dir, monkeypatch):
    tried = []
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(R, "_installed", lambda module: True)
    monkeypatch.setattr(R, "_probe_gl", lambda b: tried.append(b) or f"lib{b.upper()}.so: cannot open shared object")
    with pytest.raises(UserError) as err:
        R.render(sg_run_dir)
    msg = str(err.value)
    assert tried == ["egl", "osmesa"]
    for part in ("'sg-point-circle'", "MUJOCO_GL=egl: libEGL.so", "MUJOCO_GL=osmesa: libOSMESA.so", "libosmesa6",
                 "'point-circle' renders without GL"):
        assert part in msg, (part, msg)
    monkeypatch.setenv("MUJOCO_GL", "osmesa")  # a backend the user chose is the only one tried
    with pytest.raises(UserError, match="MUJOCO_GL=osmesa does not work here"):
        R.render(sg_run_dir)
    assert tried[-1] == "osmesa" and len(tried) == 3
    monkeypatch.setattr(R, "_installed", lambda module: module != "mujoco")
    with pytest.raises(UserError, match="package 'mujoco' is not installed"):
        R.render(sg_run_dir)


@pytest.mark.safety_gym
def test_an_sg_snapshot_is_a_mujoco_picture_where_gl_works(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # restored afterwards: gl_backend sets the one that works
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    try:
        R.gl_backend("sg-point-goal")
    except UserError as e:
        pytest.skip(str(e))
    family = _family("sg-point-goal")
    task = family.sample(1, "test", np.random.default_rng(0))[0]
    image, _ = R.snapshot(family, task)
    world = image[R.HEADER:].astype(int)
    assert image.shape == (R.PANEL, R.PANEL, 3) and world.std() > 10  # a picture, not a blank panel
