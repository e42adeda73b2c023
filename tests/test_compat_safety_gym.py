"""Tests for safemeta.compat.safety_gym (the Python 3.11 dataclass shim)."""

import dataclasses

import numpy as np
import pytest

from safemeta.compat.safety_gym import (
    import_omnisafe,
    import_safety_gymnasium,
    ndarray_defaults_as_factories,
)


def _assert_dataclasses_unpatched():
    assert dataclasses._get_field.__qualname__ == "_get_field"
    with pytest.raises(ValueError, match="mutable default"):

        @dataclasses.dataclass
        class Bad:
            x: np.ndarray = np.zeros(3)


def test_patch_turns_ndarray_default_into_copying_factory():
    arr = np.arange(3.0)
    with ndarray_defaults_as_factories():

        @dataclasses.dataclass
        class Holder:
            x: np.ndarray = arr
            y: np.ndarray = dataclasses.field(default=arr)
            n: int = 1

    fields = dataclasses.fields(Holder)
    assert all(f.default_factory is not dataclasses.MISSING for f in fields[:2])
    assert fields[2].default == 1 and fields[2].default_factory is dataclasses.MISSING
    a, b = Holder(), Holder()
    assert a.x is not b.x and a.x is not arr and a.y is not arr
    a.x[0] = 99.0
    np.testing.assert_array_equal(b.x, arr)
    np.testing.assert_array_equal(arr, [0.0, 1.0, 2.0])
    _assert_dataclasses_unpatched()


def test_patch_is_undone_when_body_raises():
    with pytest.raises(RuntimeError), ndarray_defaults_as_factories():
        raise RuntimeError("import failed")
    _assert_dataclasses_unpatched()


@pytest.mark.safety_gym
def test_point_goal_reset_and_step():
    sg = import_safety_gymnasium()
    env = sg.make("SafetyPointGoal1-v0")
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == env.observation_space.shape == (60,)
        assert isinstance(info, dict)
        env.action_space.seed(0)
        for _ in range(10):
            out = env.step(env.action_space.sample())
            assert len(out) == 6  # obs, reward, cost, terminated, truncated, info
            obs, reward, cost, terminated, truncated, info = out
            assert obs.shape == (60,) and np.all(np.isfinite(obs))
            assert np.isfinite(float(reward)) and float(cost) >= 0.0
            assert isinstance(terminated, bool) and isinstance(truncated, bool)
            assert isinstance(info, dict)
            if terminated or truncated:
                obs, info = env.reset()
    finally:
        env.close()


@pytest.mark.safety_gym
def test_dataclasses_restored_after_import():
    sg = import_safety_gymnasium()
    assert import_safety_gymnasium() is sg
    from safety_gymnasium.assets.geoms import Goal

    assert Goal().color is not Goal().color
    assert import_omnisafe().__name__ == "omnisafe"
    _assert_dataclasses_unpatched()
