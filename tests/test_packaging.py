"""The wheel, as a package index would serve it: only this project's names, suites inside, runs in ./results.

Builds the wheel from this checkout, installs it with --no-deps into a fresh venv that sees the packages of
the interpreter running the tests (in a venv or not), and runs the smoke suite from an empty temporary folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str | Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds
    source = tmp_path_factory.mktemp("source") / "nsa-bench"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "results", "*.egg-info", "__pycache__", ".pytest_cache"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source)
    (found,) = out.glob("nsa_bench-*.whl")
    return found


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv that sees the packages of the interpreter running the tests (torch, pandas, ...) but not
    this checkout: `--system-site-packages` would show the *base* Python's packages, which inside a venv (how
    most people install) lack torch. The running interpreter's site-packages go on its path by a .pth file
    (a plain path: no .pth in there is processed, so an editable install of this checkout stays out)."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    here = dict.fromkeys(sysconfig.get_paths()[name] for name in ("purelib", "platlib"))
    (purelib / "_tests_parent_packages.pth").write_text("".join(f"{path}\n" for path in here))
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    return python


def _top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}


def test_wheel_installs_only_this_projects_names(wheel: Path):
    top = _top_level_names(wheel)
    print(f"wheel top-level names: {sorted(top)}")
    assert top == {"nsa_bench", "nsa_kernels"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    # every module of the checkout is in the wheel, the kernels under their import name
    for source in sorted((REPO / "nsa_bench").rglob("*.py")):
        assert source.relative_to(REPO).as_posix() in names
    for source in sorted((REPO / "kernels").glob("*.py")):
        assert f"nsa_kernels/{source.name}" in names
    for suite in sorted((REPO / "suites").glob("*.toml")):
        assert f"nsa_bench/suites_data/{suite.name}" in names


def test_installed_wheel_runs_the_smoke_suite_from_a_temporary_folder(venv_python: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    where = _run(venv_python, "-c", "import nsa_bench, nsa_kernels; print(nsa_bench.__file__); "
                 "print(nsa_kernels.__file__)", cwd=tmp_path, env=env).stdout.split()
    assert all(str(venv_python.parent.parent) in path for path in where), where  # the wheel's copy, not the checkout
    nsa_bench_script = venv_python.parent / "nsa-bench"
    help_text = _run(nsa_bench_script, "sweep", "-h", cwd=tmp_path, env=env).stdout
    assert "smoke" in help_text and "paper" in help_text
    run = _run(nsa_bench_script, "sweep", "--suite", "smoke", "--quiet", "--no-plots", cwd=tmp_path, env=env)
    print(run.stdout[-2000:])
    runs = list((tmp_path / "results").iterdir())
    assert len(runs) == 1 and (runs[0] / "results.csv").is_file() and (runs[0] / "env.json").is_file()
    site = Path(where[0]).parent.parent
    assert not (site / "results").exists()
    for name in ("kernels", "cli", "suites"):
        assert not (site / name).exists() and not (site / f"{name}.py").exists()
