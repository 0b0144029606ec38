"""Two processes (`accelerate launch`, DDP over gloo on CPU) train exactly as one with the same global batch,
and a resumed two-process run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.tuner_support import FIXTURES, save_tiny_llama, toy_trajectories, write_selection

from critstep.tuner import TuneConfig, tune

REPO = Path(__file__).resolve().parents[1]
# Tiny steps, float32 (run-to-run noise far below the tolerance), a learning rate large enough that a
# wrongly weighted gradient shows in the next step's loss.
SETTINGS = {"max_steps": 4, "max_seq_len": 256, "compute_dtype": "float32", "lr": 0.02, "save_every": 2,
            "eval_fraction": 0.2, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    trajectories = toy_trajectories(16)
    # Supervised-token counts that differ a lot between micro-batches: one step, or all four.
    steps = {t.id: [[3], [0, 1, 2, 3], [1]][i % 3] for i, t in enumerate(trajectories)}
    return write_selection(tmp_path_factory.mktemp("data") / "selected.jsonl", trajectories, steps)


def _launch(selection: Path, tiny: Path, out: Path, script: list[str] | None = None, **settings: object) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2` (on a CPU-only machine: torchrun + gloo) of `critstep tune`."""
    values = {**SETTINGS, **settings}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               *(script or ["-m", "critstep"]),
               "tune", str(selection), "--model", str(tiny), "--out", str(out), "--quiet",
               *[arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _free_port() -> int:
    """A port no one listens on (other test runs on the machine may hold torchrun's default 29500)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def _assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def two_process_run(tiny, selection, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = _launch(selection, tiny, out, lora_dropout=0.0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_processes_train_like_one_with_the_same_global_batch(tiny, selection, two_process_run, tmp_path):
    one = tmp_path / "one"
    result = tune(selection, TuneConfig(model=str(tiny), lora_dropout=0.0, grad_accum=2, **SETTINGS), one, progress=False)
    _assert_same_adapter(one, two_process_run)
    two = json.loads((two_process_run / "tune_result.json").read_text())
    assert (two["processes"], result.processes) == (2, 1) and two["steps"] == result.steps == 4
    assert _losses(two_process_run) == pytest.approx(_losses(one), rel=1e-5)
    assert two["eval_loss_after"] == pytest.approx(result.eval_loss_after, rel=1e-5)


def test_resumed_two_process_run_matches_an_uninterrupted_one(tiny, selection, tmp_path):
    # Dropout on: each process draws its own masks, so each must get its own RNG state back.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _launch(selection, tiny, straight, lora_dropout=0.1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    crash = _launch(selection, tiny, resumed, script=[str(FIXTURES / "crash_after_checkpoint.py")], lora_dropout=0.1)
    assert crash.returncode != 0 and not (resumed / "adapter_model.safetensors").exists()
    saved = resumed / "checkpoint"
    assert json.loads((saved / "state.json").read_text())["step"] == 2
    assert {p.name for p in saved.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}

    proc = _launch(selection, tiny, resumed, lora_dropout=0.1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 2 of 4" in proc.stderr
    _assert_same_adapter(straight, resumed)
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)
