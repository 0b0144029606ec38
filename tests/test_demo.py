"""The demo's pipeline end to end at reduced size: every stage runs on the real bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from critstep.cli import cli
from critstep.demo import SAMPLE_DIR, DemoOptions, run_demo, split_heldout
from critstep.formats import read_trajectories
from critstep.labels import read_labels


def test_bundled_sample_is_small_labeled_and_valid() -> None:
    trajectories = read_trajectories(SAMPLE_DIR / "trajectories.jsonl")
    labels = read_labels(SAMPLE_DIR / "labels.jsonl", trajectories)
    assert len(labels) == len(trajectories) == 48
    assert sum(p.stat().st_size for p in SAMPLE_DIR.iterdir()) < 1_000_000
    assert all(lab.plan == "" and all(c.reason == "" for c in lab.critical) for lab in labels.values())
    train, heldout = split_heldout(trajectories, 4)
    assert len(heldout) == 12 and {t.env for t in heldout} == {t.env for t in trajectories}
    assert not {t.id for t in train} & {t.id for t in heldout}


def test_demo_pipeline_at_reduced_size(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    lines: list[str] = []
    result = run_demo(DemoOptions(out=tmp_path, limit=24, tune_steps=2, max_seq_len=256, progress=False), echo=lines.append)
    text = "\n".join(lines)
    assert text.count("    done in ") == 7
    for path in result.outputs.values():
        assert path.exists(), path
    report = json.loads((tmp_path / "compare" / "report.json").read_text())
    names = {row["name"] for row in report["selectors"]}
    assert {"oracle", "distilled", "cascade@25%", "cascade@50%", "perplexity", "random", "all"} <= names
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert result.eval_loss_before is not None and result.eval_loss_after is not None
    assert set(result.cv_f1) == {"default", "ratio"}
    selected = read_trajectories(tmp_path / "selected.distilled.jsonl")
    assert len(selected) == 24 and all("critical_steps" in t.metadata for t in selected)
    # Results travel: nothing written names this machine's directories (the output's, the model
    # cache's) by an absolute path; relative ones ("../../tmp/...") are fine.
    import re

    from critstep.models import cache_dir

    absolute = re.compile(rf"(?<![\w.])({re.escape(str(tmp_path))}|{re.escape(str(cache_dir()))})")
    for path in tmp_path.rglob("*"):
        if path.suffix in (".json", ".jsonl", ".md", ".yaml"):
            assert not absolute.search(path.read_text(encoding="utf-8")), path


def test_the_demo_says_how_long_it_will_take_here_and_what_to_do_when_busy() -> None:
    from critstep.demo_pace import Pace
    from critstep.runtime import cpu_share

    quiet = Pace(2, 2, 0.0, cpu_share(2, 2, 0.0))
    one_busy = Pace(1, 2, 1.0, cpu_share(1, 2, 1.0))  # another process holds one core
    crowded = Pace(1, 2, 12.0, cpu_share(1, 2, 12.0))
    full = (48, 30, 1024)
    assert round(sum(quiet.expected_seconds(*full))) == 223  # the README's quiet run: 3 min 43 s
    assert one_busy.expected_seconds(*full)[5] == pytest.approx(2 * quiet.expected_seconds(*full)[5])
    assert not any("busy" in line for line in one_busy.describe(400))
    assert "critstep demo --limit 24 --tune-steps 5" in crowded.describe(3000)[1]
    assert crowded.expected_seconds(24, 2, 256)[5] < crowded.expected_seconds(*full)[5] / 50


def test_demo_command_is_wired() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0 and "--tune-steps" in result.output
