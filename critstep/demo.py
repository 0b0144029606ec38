"""`critstep demo`: the whole pipeline on the bundled sample, stage by stage, each one timed.

validate → teacher labels → distill → select (distilled + baselines) → compare → QLoRA-tune
SmolLM2-135M on the distilled selection → eval loss on held-out critical steps before and after.

The sample's trajectories are split once: a quarter of each env is held out. The distilled
selector learns from the labels of the rest, `compare` scores every selector on the held-out
quarter, and the tuner trains on the rest's distilled selection and measures its loss on the
held-out quarter's *teacher* critical steps, so the eval loss says how well tuning on the cheap
selector transfers to what the teacher calls critical.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critstep.demo_pace import REFERENCE_TRAJECTORIES, Pace, duration
from critstep.formats import read_trajectories, write_trajectories
from critstep.io import claim_output_dir
from critstep.labels import TrajectoryLabels, read_labels, selections_from_labels, write_labels
from critstep.trajectory import Trajectory

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "sample"
BASELINES = ("perplexity", "random", "all")


@dataclass
class DemoOptions:
    out: Path = Path("demo-out")
    features: str | None = None  # feature groups of the distilled selector (default: FeatureConfig's)
    tune_steps: int = 30
    max_seq_len: int = 1024
    heldout_every: int = 4  # every n-th trajectory of each env is held out
    limit: int | None = None  # only the first N trajectories (the reduced-size test)
    model: str = "smollm2-135m"
    live_oracle: bool = False  # label with the OpenAI-compatible server instead of the recorded labels
    oracle_model: str = "gpt-4o"
    max_oracle_cost: float = 2.0
    progress: bool = True


@dataclass
class DemoResult:
    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    cv_f1: dict[str, float] = field(default_factory=dict)
    compare_table: str = ""
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None


def live_oracle_available() -> bool:
    """A key or a server was given through the environment, so the live oracle can be asked."""
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))


def split_heldout(trajectories: Sequence[Trajectory], every: int) -> tuple[list[Trajectory], list[Trajectory]]:
    """Every `every`-th trajectory of each env (in file order) is held out; the rest trains."""
    seen: dict[str, int] = defaultdict(int)
    train, heldout = [], []
    for t in trajectories:
        seen[t.env] += 1
        (heldout if seen[t.env] % every == 0 else train).append(t)
    return train, heldout


class _Stages:
    def __init__(self, expected: Sequence[float], echo: Callable[[str], None], result: DemoResult):
        self.expected, self.total, self.echo, self.result, self.n = expected, len(expected), echo, result, 0

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.n += 1
        expected = self.expected[self.n - 1]
        self.echo(f"\n[{self.n}/{self.total}] {name}" + (f"  (expected ~{duration(expected)})" if expected >= 5 else ""))
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.result.timings[name] = seconds
        self.echo(f"    done in {seconds:.1f} s")


def run_demo(options: DemoOptions, echo: Callable[[str], None] = print) -> DemoResult:
    from critstep.compare.pipeline import CompareOptions, run_compare
    from critstep.distill.features import FeatureConfig, parse_groups
    from critstep.distill.train import train_distilled
    from critstep.selector import build_selector
    from critstep.selector.cascade import Budget
    from critstep.tuner import TuneConfig, tune

    _hush_libraries()
    out = claim_output_dir(options.out, "demo")
    result = DemoResult(out)
    pace = Pace.here()
    expected = pace.expected_seconds(min(options.limit or REFERENCE_TRAJECTORIES, REFERENCE_TRAJECTORIES), options.tune_steps, options.max_seq_len)
    for line in pace.describe(sum(expected)):
        echo(line)
    stage = _Stages(expected, echo, result)

    with stage("validate the bundled sample"):
        trajectories = read_trajectories(SAMPLE_DIR / "trajectories.jsonl")[: options.limit]
        envs = sorted({t.env for t in trajectories})
        echo(f"    {len(trajectories)} trajectories, {sum(t.n_steps for t in trajectories)} steps ({', '.join(envs)}); no problems")
        train, heldout = split_heldout(trajectories, options.heldout_every)
        write_trajectories(out / "train.jsonl", train)
        write_trajectories(out / "heldout.jsonl", heldout)
        echo(f"    split: {len(train)} to learn from, {len(heldout)} held out for comparing and for the eval loss")

    with stage("teacher labels"):
        labels = _teacher_labels(trajectories, options, echo)
        write_labels(out / "labels.jsonl", [labels[t.id] for t in trajectories if t.id in labels])
        heldout_labels = {t.id: labels[t.id] for t in heldout if t.id in labels}
        write_labels(out / "heldout.labels.jsonl", heldout_labels.values())
        result.outputs["teacher labels"] = out / "labels.jsonl"

    with stage("distill a selector from the teacher labels"):
        groups = parse_groups(options.features) if options.features else FeatureConfig().groups
        train_labels = {t.id: labels[t.id] for t in train if t.id in labels}
        report = train_distilled(train, train_labels, out / "distilled", features=FeatureConfig(groups=groups), folds=min(5, len(train_labels)))
        result.cv_f1 = {mode: report["cv"][mode]["f1"] for mode in ("default", "ratio")}
        echo(f"    features: {', '.join(groups)}; {report['training_data']['steps']} steps of {len(train_labels)} trajectories")
        echo(f"    grouped {report['cv']['folds']}-fold cross-validation F1 against the teacher: "
             f"{result.cv_f1['default']:.3f} (the model's own mode, {report['policy']['mode']}), {result.cv_f1['ratio']:.3f} (top 30%)")
        result.outputs["distilled selector"] = out / "distilled"

    with stage("select critical steps"):
        distilled = build_selector("distilled", model_dir=out / "distilled")  # its default mode, as `critstep select`
        selected = distilled.select(trajectories)
        write_trajectories(out / "selected.distilled.jsonl", trajectories, selected)
        train_selected = [t for t in train if t.id in selected]
        write_trajectories(out / "train.selected.jsonl", train_selected, selected)
        share = sum(len(s.steps) for s in selected.values()) / max(1, sum(t.n_steps for t in trajectories))
        echo(f"    distilled: {share:.1%} of the steps selected -> {out / 'selected.distilled.jsonl'}")
        result.outputs["distilled selection"] = out / "selected.distilled.jsonl"

    with stage("compare selectors against the teacher on the held-out trajectories"):
        compare = run_compare(
            out / "heldout.jsonl",
            out / "heldout.labels.jsonl",
            out / "compare",
            CompareOptions(
                selectors=["oracle", "distilled", "cascade", *BASELINES],
                model_dir=out / "distilled",
                budgets=[Budget(share=0.25), Budget(share=0.5)],
                oracle_labels=out / "heldout.labels.jsonl",
                teacher_agreement=0.86,
            ),
            echo=lambda m: None,
        )
        result.compare_table = compare.markdown_table
        echo("\n".join("    " + line for line in result.compare_table.splitlines()))
        result.outputs["comparison"] = out / "compare" / "report.md"
        result.outputs["cost vs F1 plot"] = out / "compare" / "cost_vs_f1.png"

    with stage(f"QLoRA-tune {options.model} on the distilled selection ({options.tune_steps} steps)"):
        config = TuneConfig(model=options.model, mode="qlora", max_steps=options.tune_steps, max_seq_len=options.max_seq_len, lr=5e-4, save_every=0)
        heldout_teacher = out / "heldout.teacher.jsonl"
        write_trajectories(heldout_teacher, heldout, selections_from_labels(heldout_labels))
        tuned = tune(out / "train.selected.jsonl", config, out / "adapter", eval_source=heldout_teacher, progress=options.progress)
        result.eval_loss_before, result.eval_loss_after = tuned.eval_loss_before, tuned.eval_loss_after
        data = tuned.stats["train"]
        echo(f"    {data['trajectories']} trajectories in {data['windows']} windows of <= {options.max_seq_len} tokens; "
             f"loss on {data['supervised_tokens']:,} of {data['window_tokens']:,} tokens ({data['selected_steps']} selected steps); "
             f"{_fmt(tuned.train_tokens_per_s, '.0f')} tokens/s")
        result.outputs["LoRA adapter"] = out / "adapter"

    with stage("eval loss on the held-out trajectories' teacher critical steps"):
        echo(f"    before tuning {_fmt(result.eval_loss_before)}  ->  after {_fmt(result.eval_loss_after)}")

    echo("\noutputs:")
    for name, path in result.outputs.items():
        echo(f"  {name:<20} {path}")
    echo(f"total {sum(result.timings.values()):.0f} s")
    return result


def _teacher_labels(trajectories: Sequence[Trajectory], options: DemoOptions, echo: Callable[[str], None]) -> dict[str, TrajectoryLabels]:
    if not options.live_oracle:
        ids = {t.id for t in trajectories}
        labels = {k: v for k, v in read_labels(SAMPLE_DIR / "labels.jsonl").items() if k in ids}
        echo(f"    recorded teacher labels: {sum(len(v.critical) for v in labels.values())} critical steps in {len(labels)} trajectories")
        echo("    (set OPENAI_API_KEY or OPENAI_BASE_URL to label live with GPT-4o or your own server)")
        return labels
    from critstep.selector.oracle import OracleConfig, OracleLabeler

    run = OracleLabeler(OracleConfig(model=options.oracle_model, max_cost=options.max_oracle_cost)).label(trajectories)
    echo("    " + run.summary().replace("\n", "\n    "))
    if not run.labels:
        from critstep.errors import CritstepError

        raise CritstepError("the live oracle labeled no trajectory; unset OPENAI_API_KEY/OPENAI_BASE_URL to use the recorded labels")
    return dict(run.labels)


def _hush_libraries() -> None:
    """Keep the demo's output to what it did: loading bars and the known foreign warnings go, any
    other warning and every error stay."""
    from transformers.utils import logging as hf_logging

    from critstep.runtime import hush_foreign_warnings

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hush_foreign_warnings()


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
