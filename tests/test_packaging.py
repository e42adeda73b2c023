"""Layout: algorithms/ and envs/ import as safemeta.algorithms / safemeta.envs; configs ship as package data."""
import subprocess
import sys
import zipfile
from importlib.resources import files

from tests.conftest import REPO


def test_mapped_packages_and_configs_resolve():
    import safemeta.algorithms.inner.trpo as trpo
    import safemeta.envs.tiny_nav as tiny
    assert trpo.__file__.endswith("algorithms/inner/trpo.py") and tiny.__file__.endswith("envs/tiny_nav.py")
    assert (files("safemeta.configs") / "defaults.yaml").is_file()
    assert (files("safemeta.configs") / "algos" / "fomaml_trpo.yaml").is_file()


def test_wheel_contains_mapped_packages_and_yaml(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("safemeta-*.whl"))).namelist()
    for must in ("safemeta/algorithms/inner/trpolag.py", "safemeta/envs/tiny_nav.py", "safemeta/configs/defaults.yaml",
                 "safemeta/configs/algos/pretrained.yaml", "safemeta/configs/envs/tiny-nav.yaml", "safemeta/cli.py",
                 "safemeta/configs/algos/meta_cpo/point-circle.yaml"):
        assert must in names, must
    assert not any(n.startswith(("algorithms/", "envs/", "tests/")) for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "safemeta = safemeta.cli:main" in zipfile.ZipFile(next(tmp_path.glob("*.whl"))).read(entry[0]).decode()
