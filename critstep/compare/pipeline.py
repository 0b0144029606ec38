"""The `compare` recipe: read, run every selector once, price, score, write the three files.

The distilled model scores the trajectories once; every cascade budget reuses those scores, so a
comparison of five budgets costs one model pass plus the oracle answers. Local selectors run
without the feature cache and their wall time includes loading their models, so the measured
seconds are what selecting these trajectories afresh costs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critstep.compare.costs import load_compute_prices
from critstep.compare.plot import plot_cost_vs_f1
from critstep.compare.report import Row, build_rows, render_markdown, write_report_json, write_report_markdown
from critstep.compare.run import SelectorResult, read_predictions, restrict, timed
from critstep.errors import InputError
from critstep.formats import read_trajectories
from critstep.io import check_outputs_apart, claim_output_dir, portable_path
from critstep.labels import TrajectoryLabels, read_labels, selections_from_labels
from critstep.selection import Selection
from critstep.selector.cascade import Budget
from critstep.selector.oracle.endpoint import DEFAULT_OPENAI_MODEL
from critstep.trajectory import Trajectory

REPORT_FILES = ("report.json", "report.md", "cost_vs_f1.png")


@dataclass
class CompareOptions:
    selectors: list[str]
    model_dir: Path | None = None
    budgets: list[Budget] = field(default_factory=list)
    uncertainty: str = "disagreement"
    oracle_labels: Path | None = None
    oracle_model: str | None = None  # None: gpt-4o at OpenAI, else the served model
    oracle_cache: Path | None = None
    oracle_request: dict[str, Any] = field(default_factory=dict)  # response_format, timeout, concurrency, max_retries
    base_url: str | None = None
    preds: list[tuple[str, Path]] = field(default_factory=list)
    teacher_agreement: float | None = None
    ratio: float = 0.3
    seed: int = 0
    lm: str = "smollm2-135m"
    device: str | None = None
    compute_prices: Path | None = None
    prices: Path | None = None
    format: str | None = None


@dataclass
class CompareReport:
    rows: list[Row]
    meta: dict[str, Any]

    @property
    def markdown_table(self) -> str:
        return "\n".join(line for line in render_markdown(self.rows, self.meta).splitlines() if line.startswith("|"))


def run_compare(
    trajectories_path: Path, labels_path: Path, out: Path, options: CompareOptions, echo: Callable[[str], None] = print
) -> CompareReport:
    from critstep.distill.metrics import evaluate_selections
    from critstep.selector.oracle.config import OracleConfig
    from critstep.selector.oracle.pricing import load_prices

    check_outputs_apart(
        {"TRAJECTORIES": trajectories_path, "--labels": labels_path, "--oracle-labels": options.oracle_labels,
         "--prices": options.prices, "--compute-prices": options.compute_prices, **{f"--pred {n}": p for n, p in options.preds}},
        {"--oracle-cache": options.oracle_cache, **{f"--out's {name}": out / name for name in REPORT_FILES}},
    )
    claim_output_dir(out, "compare")  # before the slow work, not after
    everything = read_trajectories(trajectories_path, options.format)
    gold_labels = read_labels(labels_path, everything)
    trajs = [t for t in everything if t.id in gold_labels]  # read_labels: not empty, every id known
    if len(trajs) < len(everything):
        echo(f"comparing on the {len(trajs)} labeled trajectories of {len(everything)}")
    ids = [t.id for t in trajs]
    compute = load_compute_prices(options.compute_prices)
    price_table = load_prices(options.prices)
    oracle_config = OracleConfig(
        model=options.oracle_model, ratio=options.ratio, cache_path=options.oracle_cache, base_url=options.base_url, prices_path=options.prices,
        **options.oracle_request,
    )
    pricer = LabelPricer(oracle_config, price_table)

    # Collected predictions are read first: a bad file should fail before minutes of selection.
    collected = [
        SelectorResult(name, restrict(read_predictions(path, everything), ids, name, path), len(trajs), notes=[f"collected from {portable_path(path)}"])
        for name, path in options.preds
    ]
    results: list[SelectorResult] = []
    recorded: dict[str, TrajectoryLabels] | None = None
    if options.oracle_labels is not None:
        recorded = read_labels(options.oracle_labels, everything)
    distilled: tuple[dict[str, Selection], float, str, list[str]] | None = None
    for name in options.selectors:
        echo(f"running {name} ...")
        if name == "oracle":
            results.append(_oracle(trajs, ids, recorded, oracle_config, pricer, options))
        elif name in ("distilled", "cascade"):
            if distilled is None:
                distilled = _distilled(trajs, gold_labels, options, echo)
            selections, seconds, device, notes = distilled
            if name == "distilled":
                results.append(SelectorResult("distilled", selections, len(trajs), seconds, device, notes=notes))
            else:
                results += _cascades(trajs, selections, seconds, device, recorded, oracle_config, pricer, options)
        else:
            results.append(_baseline(name, trajs, options))
    results += collected

    rows = build_rows(results, gold_labels, {t.id: t for t in trajs}, compute, evaluate_selections)
    meta = {
        "trajectories": portable_path(trajectories_path),
        "labels": portable_path(labels_path),
        "n_trajectories": len(trajs),
        "n_steps": sum(t.n_steps for t in trajs),
        "ratio": options.ratio,
        "teacher_agreement": options.teacher_agreement,
        "oracle_model": options.oracle_model,
        "oracle_prices": price_table.path,
        "oracle_prices_as_of": price_table.as_of,
        "compute_prices": compute.path,
        "compute_prices_as_of": compute.as_of,
        "usd_per_hour": compute.usd_per_hour,
    }
    write_report_json(out / "report.json", rows, meta)
    write_report_markdown(out / "report.md", rows, meta)
    left_out = plot_cost_vs_f1(out / "cost_vs_f1.png", rows, options.teacher_agreement)
    if left_out:
        echo(f"not in the plot (no measured cost): {', '.join(left_out)}")
    return CompareReport(rows, meta)


class LabelPricer:
    """Dollars of one oracle answer: what its recorded usage says it cost (Batch API discount and
    repair request included), else its token usage x the price table, else an estimate.

    Pricing answers by their usage (not by this run's spend) keeps the oracle's cost honest when
    the answers come from a cache or a file and cost nothing today.
    """

    def __init__(self, config: Any, table: Any):
        self.config = config
        self.table = table
        self.estimated = 0
        self._estimator: Any = None

    def __call__(self, labels: TrajectoryLabels, trajectory: Trajectory) -> float:
        usage = labels.extra.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("cost_usd"), (int, float)):
            return float(usage["cost_usd"])
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            model = str(usage.get("model") or self.config.model or DEFAULT_OPENAI_MODEL)
            return self.table.cost(model, int(usage["prompt_tokens"]), int(usage.get("completion_tokens", 0)), bool(usage.get("batch", False)))
        self.estimated += 1
        return self.estimate(trajectory)

    def estimate(self, trajectory: Trajectory) -> float:
        """List price of asking about `trajectory` (the cache is ignored: it would say $0)."""
        if self._estimator is None:
            from dataclasses import replace

            from critstep.selector.oracle.labeler import OracleLabeler

            self._estimator = OracleLabeler(replace(self.config, use_cache=False), self.table)
        return float(self._estimator.estimate([trajectory]).cost_usd)


def _oracle(trajs: Sequence[Trajectory], ids: list[str], recorded: Mapping[str, TrajectoryLabels] | None, config: Any, pricer: LabelPricer, options: CompareOptions) -> SelectorResult:
    seconds: float | None = None
    if recorded is None:
        from critstep.selector.oracle.labeler import OracleLabeler

        run, seconds = timed(lambda: OracleLabeler(config).label(trajs))
        recorded = run.labels
    source = portable_path(options.oracle_labels) if options.oracle_labels else "the live oracle"
    selections = restrict(selections_from_labels(recorded), ids, f"oracle labels ({source})", options.oracle_labels)
    by_id = {t.id: t for t in trajs}
    pricer.estimated = 0
    usd = sum(pricer(recorded[i], by_id[i]) for i in ids)
    notes = [f"answers from {source}"]
    if pricer.estimated:
        notes.append(f"{pricer.estimated} answer(s) without recorded usage: cost estimated from prompt size (±20%)")
    return SelectorResult("oracle", selections, len(trajs), None, "api", oracle_usd=usd, oracle_calls=len(ids), oracle_share=1.0, notes=notes)


def _distilled(
    trajs: Sequence[Trajectory], labels: Mapping[str, TrajectoryLabels], options: CompareOptions, echo: Callable[[str], None]
) -> tuple[dict[str, Selection], float, str, list[str]]:
    """The distilled selector's selections, seconds, device and notes.

    With --model, that model (a warning if it was trained on compared trajectories). Without it,
    the shipped model, unless it was trained on some of the compared trajectories: then the
    distilled selector is cross-fitted over them (each fold scored by a model trained on the
    others, with the shipped model's settings), so its figure stays out of sample.
    """
    from critstep.distill.persistence import default_model_dir, in_sample_warning
    from critstep.models import default_device
    from critstep.selector.distilled import DistilledSelector

    device = options.device or default_device()
    ids = [t.id for t in trajs]
    model_dir = options.model_dir or default_model_dir()
    warning = in_sample_warning(model_dir, ids)
    if warning and options.model_dir is None:
        echo(f"the shipped distilled model was trained on some of these trajectories: cross-fitting it over the {len(ids)} labeled ones")
        return _cross_fit(trajs, labels, model_dir, device, options)
    if warning:
        echo(f"warning: {warning}")
    # No feature cache: the measured time must be what selecting these trajectories costs afresh.
    selector = DistilledSelector(model_dir=model_dir, device=device, cache=None)
    selections, seconds = timed(lambda: selector.select(trajs, options.ratio))
    notes = [warning] if warning else [] if options.model_dir else ["the shipped model"]
    return selections, seconds, device, notes


def _cross_fit(
    trajs: Sequence[Trajectory], labels: Mapping[str, TrajectoryLabels], model_dir: Path, device: str, options: CompareOptions
) -> tuple[dict[str, Selection], float, str, list[str]]:
    """Out-of-sample selections by k-fold cross-fitting with the settings of the model at `model_dir`."""

    from critstep.distill.dataset import build_dataset
    from critstep.distill.estimator import StepClassifier
    from critstep.distill.features import FeatureExtractor
    from critstep.distill.persistence import load_model
    from critstep.distill.train import fold_models

    template = load_model(model_dir)
    folds = min(5, len(trajs))
    if folds < 2:
        raise InputError("cross-fitting the distilled selector needs at least 2 labeled trajectories (or pass --model DIR)")
    extractor = FeatureExtractor(template.features, device=device, cache=None)
    data, seconds = timed(lambda: build_dataset(extractor, trajs, labels))
    folds = min(folds, len(data.trajectories))  # trajectories without steps are not in the data
    if folds < 2:
        raise InputError("cross-fitting the distilled selector needs at least 2 labeled trajectories with steps (or pass --model DIR)")
    params = template.classifier.get_params()
    selections: dict[str, Selection] = {}
    try:
        for _, clf, test in fold_models(data, folds, seed=options.seed, make=lambda: StepClassifier(**params)):
            for i in test:
                t = data.trajectories[i]
                rows = data.groups == t.id
                p, s = timed(lambda r=rows, c=clf: c.predict_proba(data.X[r])[:, 1])
                seconds += s
                selections[t.id] = Selection(t.id, clf.policy_.select(p, options.ratio), scores=[float(v) for v in p])
    except ValueError as e:  # e.g. a fold whose training steps are all critical (or none)
        raise InputError(f"cross-fitting the distilled selector over these labels failed: {e} (or pass --model DIR)") from None
    for t in trajs:  # trajectories without steps
        selections.setdefault(t.id, Selection(t.id, [], scores=[]))
    note = (f"cross-fitted over the labeled trajectories ({folds} folds, the shipped model's features and settings): out of sample; "
            "time = features + scoring, training excluded")
    return selections, seconds, device, [note]


def _cascades(
    trajs: Sequence[Trajectory],
    selections: dict[str, Selection],
    distilled_seconds: float,
    device: str,
    recorded: Mapping[str, TrajectoryLabels] | None,
    config: Any,
    pricer: LabelPricer,
    options: CompareOptions,
) -> list[SelectorResult]:
    from critstep.selector.cascade import RecordedOracle, route

    by_id = {t.id: t for t in trajs}
    if recorded is not None:
        costs = {i: pricer(lab, by_id[i]) for i, lab in recorded.items() if i in by_id}
        oracle: Any = RecordedOracle(recorded, costs)
        source = f"recorded answers from {portable_path(options.oracle_labels)}"
    else:
        from critstep.selector.oracle.labeler import OracleLabeler

        oracle = OracleLabeler(config)
        source = "the live oracle"
    out = []
    for budget in options.budgets:
        (chosen, run), seconds = timed(lambda b=budget: route(trajs, selections, oracle, b, options.uncertainty))
        notes = [f"oracle: {source}; {len(run.answered)} answered, {len(run.failed)} failed, ${run.cost_usd:.4f} spent"]
        out.append(
            SelectorResult(
                f"cascade@{budget.label()}",
                chosen,
                len(trajs),
                distilled_seconds + seconds,
                device,
                oracle_usd=run.cost_usd,
                oracle_calls=run.calls,
                oracle_share=run.share_routed,
                notes=notes,
            )
        )
    return out


def _baseline(name: str, trajs: Sequence[Trajectory], options: CompareOptions) -> SelectorResult:
    from critstep.selector import build_selector

    if name == "random":
        selector = build_selector("random", seed=options.seed)
        device = "cpu"
    elif name == "perplexity":
        from critstep.models import default_device

        device = options.device or default_device()
        selector = build_selector("perplexity", lm=options.lm, device=device, cache=None)
    else:
        selector = build_selector(name)
        device = "cpu"
    selections, seconds = timed(lambda: selector.select(trajs, options.ratio))
    return SelectorResult(name, selections, len(trajs), seconds, device)
