"""Packaging: the wheel's contents and entry point, and the import rules between the layers."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """Build the wheel (~2 s) from a copy of the sources, so no build/ or egg-info lands in the repo."""
    source = tmp_path_factory.mktemp("source")
    for name in ("amc", "envs", "agents"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def test_wheel_has_only_the_amc_package(wheel):
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"amc"}
    assert not any(n.startswith(("tests/", "runs/", "envs/", "agents/")) for n in names)


def test_wheel_contents(wheel):
    names = set(wheel.namelist())
    for required in (
        "amc/__init__.py",
        "amc/cli/__init__.py",
        "amc/cli/__main__.py",
        "amc/train.py",
        "amc/envs/__init__.py",
        "amc/agents/__init__.py",
        "amc/data/sample/cifar10_sample.tar.gz",
        "amc/data/sample/cifar10_sample.json",
    ):
        assert required in names, required
    # every source module and every shipped checkpoint (with its manifest) is packaged
    for folder, package in (("amc", "amc"), ("envs", "amc/envs"), ("agents", "amc/agents")):
        for file in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{file.relative_to(ROOT / folder).as_posix()}" in names, file
    for pattern in ("*.pt", "*.json"):
        for file in (ROOT / "amc" / "models" / "checkpoints").glob(pattern):
            assert f"amc/models/checkpoints/{file.name}" in names, file
    for file in (ROOT / "agents" / "presets").glob("*.yaml"):  # the agents' hyper-parameter presets
        assert f"amc/agents/presets/{file.name}" in names, file


def test_wheel_console_script(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    section = text.split("[console_scripts]", 1)[1].split("[", 1)[0]
    assert "amc = amc.cli:main" in [line.strip() for line in section.splitlines()]


# --- import rules -----------------------------------------------------------------------------------


def imported_modules(file: Path) -> set[str]:
    """Top-level names of every absolute import in ``file``."""
    tree = ast.parse(file.read_text(), filename=str(file))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def source_files(*folders: str) -> list[Path]:
    files = [f for folder in folders for f in sorted((ROOT / folder).rglob("*.py"))]
    assert files
    return files


def test_no_bare_envs_or_agents_imports():
    """The folders install as amc.envs and amc.agents; ``import envs`` works only in the checkout."""
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_modules(f) & {"envs", "agents"})
        for f in source_files("amc", "envs", "agents", "tests")
    }
    assert {f: names for f, names in offenders.items() if names} == {}


def test_core_does_not_import_the_rl_stack():
    """amc/ (models, data, training, CLI) must not depend on gymnasium or stable-baselines3."""
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_modules(f) & {"gymnasium", "gym", "stable_baselines3"})
        for f in source_files("amc")
    }
    assert {f: names for f, names in offenders.items() if names} == {}


def test_core_imports_without_the_rl_stack():
    """Importing the core with gymnasium and stable-baselines3 blocked succeeds (no transitive import)."""
    code = (
        "import sys\n"
        "sys.modules.update(gymnasium=None, gym=None, stable_baselines3=None)\n"
        "import amc.cli, amc.train, amc.data, amc.models, amc.data.sample\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
