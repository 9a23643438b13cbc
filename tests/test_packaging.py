"""constraints/ and pretrained/ install as infd_solve.constraints / infd_solve.pretrained, never top level.

Builds a regular and an editable wheel with setuptools' PEP 517 hooks (no network) from a copy of the
repository and installs each into a fresh virtual environment.
"""

import os
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

from .helpers import REPO

pytestmark = pytest.mark.slow

PROBE = (
    "import importlib.util as u, json; "
    "print(json.dumps({n: getattr(u.find_spec(n), 'origin', None) for n in "
    "['infd_solve.constraints', 'infd_solve.pretrained', 'constraints', 'recipes', 'pretrained']}))"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    copy = tmp_path_factory.mktemp("src") / "infd-solve"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", "fixtures", "outputs", "*.safetensors", ".hypothesis"))
    return copy


def build(source, hook, out):
    code = f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"
    name = subprocess.run([sys.executable, "-c", code], cwd=source, check=True, capture_output=True, text=True)
    return out / name.stdout.strip().splitlines()[-1]


def install_and_probe(wheel, env_dir):
    # A bare environment: infd_solve imports nothing heavy at package level, so find_spec works without torch.
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # only what is installed in it: a PYTHONPATH pointing at a checkout would show its top-level folders
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([py, "-c", PROBE], cwd=env_dir, env=bare, check=True, capture_output=True, text=True)
    import json

    return json.loads(out.stdout)


def test_regular_wheel(source, tmp_path):
    wheel = build(source, "build_wheel", tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "infd_solve/constraints/__init__.py" in names and "infd_solve/pretrained/__init__.py" in names
    # shipped weights travel as package data (weights themselves are left out of this copy to keep it fast)
    assert "infd_solve/pretrained/default/infd/config.json" in names
    assert "infd_solve/pretrained/default/clip/open_clip_config.json" in names
    assert "infd_solve/pretrained/MODEL_CARD.md" in names
    assert not any(n.split("/")[0] in ("constraints", "recipes", "pretrained", "tests") for n in names)
    # every package of the source tree is in the wheel (a subpackage missing from pyproject.toml is not)
    for init in (source / "infd_solve").rglob("__init__.py"):
        assert f"infd_solve/{init.relative_to(source / 'infd_solve').as_posix()}" in names, init
    found = install_and_probe(wheel, tmp_path / "env")
    site = str(tmp_path / "env")
    assert found["infd_solve.constraints"].startswith(site)
    assert found["infd_solve.constraints"].endswith("infd_solve/constraints/__init__.py")
    assert found["infd_solve.pretrained"].startswith(site)
    assert found["constraints"] is None and found["recipes"] is None and found["pretrained"] is None
    # the commands are installed as console scripts
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command, target in (("infd-layout", "infd_solve.cli.layout:main"),
                            ("infd-sr", "infd_solve.cli.super_resolution:main"),
                            ("infd-inpaint", "infd_solve.cli.inpaint:main"),
                            ("infd-sample", "infd_solve.cli.sample:main")):
        assert f"{command} = {target}" in text
        assert (tmp_path / "env" / "bin" / command).is_file()


def test_editable_wheel(source, tmp_path):
    wheel = build(source, "build_editable", tmp_path)
    found = install_and_probe(wheel, tmp_path / "env")
    assert found["infd_solve.constraints"] == str(source / "constraints" / "__init__.py")
    assert found["infd_solve.pretrained"] == str(source / "pretrained" / "__init__.py")
    assert found["constraints"] is None and found["recipes"] is None and found["pretrained"] is None
