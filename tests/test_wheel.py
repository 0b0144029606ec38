"""A real wheel carries critstep's configs and sample, and an installed (not editable) critstep finds them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["prices.yaml", "compute_prices.yaml", "tune-smollm2-135m-cpu.yaml", "tune-llama3.1-8b-qlora.yaml", "tune-qwen2.5-7b-qlora.yaml"]


def _run(*cmd: object, cwd: Path | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd or REPO), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="77")  # the build backend, taken from this venv (no download)
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "critstep", src / "critstep", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", out, cwd=src)
    return next(out.glob("critstep-*.whl"))


def test_the_wheel_holds_the_configs_and_the_sample(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"critstep/configs/{n}" for n in SHIPPED} <= names
    assert {"critstep/data/sample/trajectories.jsonl", "critstep/data/sample/labels.jsonl"} <= names
    shipped = "critstep/data/models/distilled-selector-seed306"
    assert {f"{shipped}/{n}" for n in ("model.json", "model.skops", "training.npz", "README.md")} <= names  # --base refits from training.npz


def test_an_installed_critstep_resolves_configs_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "-q", wheel)
    # The installed critstep comes first; its third-party dependencies (pyyaml) from this venv after it.
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "yaml").exists())
    (site / "zz_deps.pth").write_text(f"{deps}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import critstep, pathlib\n"
        "from critstep.selector.oracle.pricing import load_prices\n"
        "from critstep.compare.costs import load_compute_prices\n"
        "from critstep.tuner.config import TuneConfig\n"
        "print(pathlib.Path(critstep.__file__).parent)\n"
        "print(load_prices().path, load_prices('configs/prices.yaml').known('gpt-4o'))\n"
        "print(load_compute_prices('compute_prices.yaml').path)\n"
        "print(TuneConfig.from_yaml('configs/tune-smollm2-135m-cpu.yaml').model)\n"
    )
    lines = _run(venv / "bin" / "python", "-c", script, cwd=elsewhere).splitlines()
    assert Path(lines[0]).is_relative_to(venv), lines[0]  # the wheel's copy, not this checkout
    assert lines[1:] == ["critstep/configs/prices.yaml True", "critstep/configs/compute_prices.yaml", "smollm2-135m"]
