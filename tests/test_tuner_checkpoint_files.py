"""The checkpoint directory swap (tuner/checkpoint.py `save`) when an earlier run was stopped midway:
a leftover `.old` directory must not break the next save, and a checkpoint caught between the two
renames is found again on resume."""

from __future__ import annotations

import json
from pathlib import Path

from critstep.tuner import checkpoint


class FakeAccelerator:
    """One process; save_state writes a file naming the step, as accelerate writes its state files."""

    is_main_process = True

    def __init__(self) -> None:
        self.step = 0

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, directory: str) -> None:
        Path(directory).mkdir(parents=True)
        (Path(directory) / "optimizer.bin").write_text(str(self.step))


def test_a_leftover_old_checkpoint_does_not_break_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    accelerator = FakeAccelerator()
    accelerator.step = 2
    checkpoint.save(path, accelerator, {"step": 2})
    stale = tmp_path / "checkpoint.old"  # a run stopped while deleting its previous checkpoint
    stale.mkdir()
    (stale / "optimizer.bin").write_text("1")
    accelerator.step = 4
    checkpoint.save(path, accelerator, {"step": 4})
    assert (path / "optimizer.bin").read_text() == "4" and checkpoint.read_state(path)["step"] == 4
    assert not stale.exists()


def test_a_checkpoint_stopped_between_the_renames_is_resumed(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    accelerator = FakeAccelerator()
    accelerator.step = 2
    checkpoint.save(path, accelerator, {"step": 2})
    path.rename(tmp_path / "checkpoint.old")  # the first rename happened, the second did not
    state = checkpoint.read_state(path)
    assert state is not None and state["step"] == 2 and (path / "optimizer.bin").read_text() == "2"
    assert json.loads((path / checkpoint.STATE_FILE).read_text())["format"] == checkpoint.FORMAT
