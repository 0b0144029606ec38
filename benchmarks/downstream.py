"""Downstream: what each selector's critical steps do to the tuned agent, against what selecting costs.

ATLaS's claim is about agents: tuning on the ~30% critical steps beats tuning on every step. This
run tunes one base model (SmolLM2-135M with QLoRA on a CPU by default; `--config` takes an 8B
config on a GPU) on the same training trajectories with the selection of each selector:

- `all` (plain SFT), `random` (30% of each trajectory's steps),
- `teacher` (the seed labels, standing in for GPT-4o),
- `distilled` (trained here on the training split's seed labels, cross-fitted so that no
  trajectory is selected by a model that saw its labels; threshold mode),
- `cascade` (the distilled selector, the oracle re-asked on the 10% least certain trajectories:
  its answers are the independent second labeling where one exists, else the teacher's label),

with the same optimizer steps and seed, then evaluates every tuned model and the untuned base
with `critstep eval`: offline on held-out trajectories (the seed-labeled ones not trained on, with
figures on their teacher-critical steps, plus unlabeled corpus trajectories of the same envs;
`heldout.jsonl` is never read) and live in ScienceWorld on its fixed suite. Differences to `all`
and to `teacher` are paired (same trajectories, same bootstrap resamples).

    nice -n 5 .venv/bin/python benchmarks/downstream.py            # writes benchmarks/results/downstream.{json,png}
    nice -n 10 .venv/bin/python benchmarks/downstream.py --set max_seq_len=512 --set pack_tokens=512 --steps 4 \\
        --eval-per-env 2 --unlabeled-per-env 1 --steps-per-trajectory 2 --eval-new-tokens 48 \\
        --live-episodes 1 --live-max-steps 4 --live-new-tokens 24   # the README's run (~1 h on a loaded 2-core CPU)
    .venv/bin/python benchmarks/downstream.py --config configs/tune-llama3.1-8b-qlora.yaml --steps 300 \\
        --eval-batch 32 --threads 8 --work runs/downstream-8b --tag 8b           # on a GPU (not run here)

Work files (selections, adapters, evaluations) go to `--work` (default
runs/downstream); a rerun skips every stage whose output is there, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _results import claim_results  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmark"
RESULTS = Path(__file__).resolve().parent / "results"
ENVS = ("alfworld", "sciworld", "qa-search", "tau-airline")
SELECTORS = ("all", "random", "teacher", "distilled", "cascade")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--config", type=Path, default=Path("configs/tune-smollm2-135m-cpu.yaml"), help="tuning config (model, QLoRA, window; a shipped name or a file)")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps of every tuning run")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a key of the tuning config (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--budget", default="10%", help="cascade oracle budget")
    ap.add_argument("--folds", type=int, default=5, help="cross-fitting folds of the distilled selector over the training split")
    ap.add_argument("--train-share", type=float, default=0.7, help="share of the seed-labeled trajectories tuned on (per env, stable hash)")
    ap.add_argument("--eval-per-env", type=int, default=0, help="at most this many labeled evaluation trajectories per env (0: all)")
    ap.add_argument("--unlabeled-per-env", type=int, default=4, help="unlabeled corpus trajectories added to the evaluation per env")
    ap.add_argument("--steps-per-trajectory", type=int, default=8, help="evaluated steps per held-out trajectory (spread first to last)")
    ap.add_argument("--eval-new-tokens", type=int, default=96)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--live-episodes", type=int, default=1, help="ScienceWorld episodes per suite task (0: no live evaluation)")
    ap.add_argument("--live-max-steps", type=int, default=15)
    ap.add_argument("--live-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the machine is shared)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--selectors", default=",".join(SELECTORS))
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "downstream")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. 8b)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot (and the table) from the results JSON")
    args = ap.parse_args()
    from critstep.configs import resolve_config

    args.config = resolve_config(args.config)
    suffix = f"-{args.tag}" if args.tag else ""
    claim_results("downstream", args.out / f"downstream{suffix}.json", args.out / f"downstream{suffix}.png")
    if args.plot_only:
        result = json.loads((args.out / f"downstream{suffix}.json").read_text())
        plot(result, args.out / f"downstream{suffix}.png")
        print_table(result)
        print("\n" + markdown_table(result))
        return

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    args.work.mkdir(parents=True, exist_ok=True)
    # Stage outputs are kept under keys of the settings they depend on, so a rerun with other
    # settings never picks up stale results.
    args.selections_dir = args.work / f"selections-share{args.train_share}-seed{args.seed}-ratio{args.ratio}-folds{args.folds}-budget{args.budget}"
    overrides = "".join(f"-{s.replace('=', '')}" for s in sorted(args.sets))
    args.adapters_dir = args.work / f"adapters-{args.config.stem}{overrides}-steps{args.steps}" / args.selections_dir.name
    args.eval_dir = args.adapters_dir / (f"eval-labeled{args.eval_per_env or 'all'}-unlabeled{args.unlabeled_per_env}-spt{args.steps_per_trajectory}"
                                         f"-new{args.eval_new_tokens}-live{args.live_episodes}x{args.live_max_steps}")

    split = make_split(args)
    selections = {name: select(name, split, args, timings) for name in args.selectors.split(",")}
    # Each selector's row is finished (tuned, then evaluated) before the next one starts, so that a
    # run cut short still yields whole rows; rerun with the same settings to add the rest.
    evaluations = {"base": evaluate("base", None, split, args, timings)}
    for name in selections:
        evaluations[name] = evaluate(name, tune_on(name, args, timings), split, args, timings)

    result = report(split, selections, evaluations, args, timings, time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    from critstep.io import write_result

    write_result(args.out / f"downstream{suffix}.json", "downstream", result)
    plot(result, args.out / f"downstream{suffix}.png")
    print_table(result)
    print("\n" + markdown_table(result))
    print(f"wrote {args.out / f'downstream{suffix}.json'} and .png; {result['wall_seconds'] / 60:.0f} min in all")


# --- data -------------------------------------------------------------------------------------


def make_split(args: argparse.Namespace) -> dict[str, Any]:
    """Train: a share of the seed-labeled trajectories of each env. Evaluation: the rest of them
    (labeled) plus unlabeled, successful corpus trajectories of the same envs (>= 3 steps, like
    the seed set). Never heldout.jsonl."""
    from critstep.formats import read_trajectories, write_trajectories
    from critstep.labels import read_labels, write_labels
    from critstep.tuner.data import stable_fraction

    corpus = [t for t in read_trajectories(args.data / "corpus.jsonl") if t.env in ENVS]
    by_id = {t.id: t for t in corpus}
    first = {i: lab for i, lab in read_labels(args.data / "seed_labels.jsonl").items() if i in by_id}
    second = {i: lab for i, lab in read_labels(args.data / "seed_labels_second.jsonl").items() if i in by_id}
    train = [t for t in corpus if t.id in first and stable_fraction(t.id, args.seed) < args.train_share]
    train_ids = {t.id for t in train}
    eval_labeled = [t for t in corpus if t.id in first and t.id not in train_ids]
    if args.eval_per_env:
        eval_labeled = [t for env in ENVS for t in [t for t in eval_labeled if t.env == env][: args.eval_per_env]]
    unlabeled: list[Any] = []
    for env in ENVS:
        pool = sorted((t for t in corpus if t.env == env and t.id not in first and t.metadata.get("success") and t.n_steps >= 3),
                      key=lambda t: stable_fraction(t.id, args.seed))
        unlabeled += pool[: args.unlabeled_per_env]
    evaluation = eval_labeled + unlabeled
    assert not {t.id for t in train} & {t.id for t in evaluation}, "never tune on the evaluation split"
    args.eval_dir.mkdir(parents=True, exist_ok=True)
    write_trajectories(args.eval_dir / "eval.jsonl", evaluation)
    write_labels(args.eval_dir / "eval.labels.jsonl", [first[t.id] for t in eval_labeled])
    return {"corpus": by_id, "first": first, "second": second, "train": train, "eval": evaluation, "eval_labeled": eval_labeled,
            "unlabeled": unlabeled}


# --- selection --------------------------------------------------------------------------------

def select(name: str, split: dict[str, Any], args: argparse.Namespace, timings: dict[str, float]) -> dict[str, Any]:
    """Select the training trajectories' critical steps with `name`; cached in WORK/selections/."""
    from critstep.formats import write_trajectories
    from critstep.io import write_json

    path = args.selections_dir / f"{name}.jsonl"
    meta_path = path.with_suffix(".json")
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    train = split["train"]
    started = time.perf_counter()
    chosen, meta = _selections(name, train, split, args, timings)
    seconds = time.perf_counter() - started
    timings[f"select {name}"] = seconds
    write_trajectories(path, train, chosen)
    steps = sum(t.n_steps for t in train)
    meta |= {"selector": name, "trajectories": len(train), "steps": steps, "selected_steps": sum(len(s.steps) for s in chosen.values()),
             "share_selected": sum(len(s.steps) for s in chosen.values()) / steps, "seconds": seconds}
    write_json(meta_path, meta)
    print(f"[select] {name}: {meta['share_selected']:.1%} of {steps} steps; ${meta['usd_per_1k']:.4f} per 1k trajectories", flush=True)
    return meta


def _selections(name: str, train: list[Any], split: dict[str, Any], args: argparse.Namespace, timings: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    from critstep.compare.costs import load_compute_prices, per_thousand
    from critstep.selector import build_selector

    cpu = load_compute_prices()
    if name in ("all", "random"):
        selector = build_selector(name, **({"seed": args.seed} if name == "random" else {}))
        started = time.perf_counter()
        chosen = selector.select(train, args.ratio)
        return chosen, {"usd_per_1k": per_thousand(cpu.usd(time.perf_counter() - started, "cpu"), len(train)), "cost": "CPU time"}
    teacher_usd = _oracle_usd(train, args)
    if name == "teacher":
        from critstep.labels import selections_from_labels

        return selections_from_labels({t.id: split["first"][t.id] for t in train}), {
            "usd_per_1k": per_thousand(sum(teacher_usd.values()), len(train)),
            "cost": "GPT-4o list price of labeling these trajectories (offline estimate, standard API)"}
    distilled, model_meta = _distilled(train, split, args, timings)
    distilled_per_1k = _distilled_usd_per_1k()
    if name == "distilled":
        return distilled, {"usd_per_1k": distilled_per_1k, "cost": DISTILLED_COST, "distilled_model": model_meta}
    from critstep.selector.cascade import Budget, RecordedOracle, route

    answers = {t.id: split["second"].get(t.id) or split["first"][t.id] for t in train}
    chosen, run = route(train, distilled, RecordedOracle(answers, teacher_usd), Budget.parse(args.budget))
    from_second = sum(1 for i in run.answered if i in split["second"])
    return chosen, {
        "usd_per_1k": distilled_per_1k + per_thousand(run.cost_usd, len(train)),
        "cost": f"{DISTILLED_COST} + GPT-4o list price of the routed trajectories",
        "budget": args.budget, "routed": len(run.routed), "answered": len(run.answered),
        "answers_from_second_labeling": from_second, "answers_from_first_labeling": len(run.answered) - from_second,
        "oracle_usd": run.cost_usd,
    }


def _oracle_usd(trajectories: list[Any], args: argparse.Namespace) -> dict[str, float]:
    """What asking GPT-4o about each trajectory costs at list price (offline estimate, no calls)."""
    from critstep.selector.oracle import OracleConfig, OracleLabeler

    estimator = OracleLabeler(OracleConfig(model="gpt-4o", use_cache=False, ratio=args.ratio))
    return {t.id: float(estimator.estimate([t]).cost_usd) for t in trajectories}


DISTILLED_COST = "CPU time of the distilled selector per 1,000 corpus trajectories on 2 free cores (benchmarks/distill_speed.py)"
_DISTILLED: dict[str, Any] = {}


def _distilled_usd_per_1k() -> float:
    """The distilled selector's measured cost (distill_speed.py, 2 free cores): wall time on this
    loaded machine would price in the other jobs' load."""
    speed = json.loads((RESULTS / "distill_speed.json").read_text())
    return float(speed["projection_1k"]["distilled_usd_per_1k_embeddings_structural"])


def _distilled(train: list[Any], split: dict[str, Any], args: argparse.Namespace, timings: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The distilled selection of the training trajectories, cross-fitted (once, then reused).

    A distilled selector is trained on a seed set and applied to new trajectories. Applied to its
    own training trajectories it would return the teacher's labels (it fits them), so each of
    `--folds` folds of the training split is selected by a model trained on the other folds'
    labels only (threshold mode, each model with its own tuned threshold).
    """
    if not _DISTILLED:
        import numpy as np

        from critstep.distill.dataset import build_dataset
        from critstep.distill.estimator import StepClassifier
        from critstep.distill.features import FeatureConfig, FeatureExtractor
        from critstep.distill.metrics import evaluate_selections
        from critstep.distill.train import selections_from_proba
        from critstep.tuner.data import stable_fraction

        started = time.perf_counter()
        labels = {t.id: split["first"][t.id] for t in train}
        data = build_dataset(FeatureExtractor(FeatureConfig()), train, labels)
        fold = np.array([int(stable_fraction(g, args.seed + 1) * args.folds) for g in data.groups])
        chosen: dict[str, Any] = {}
        thresholds = []
        for k in range(args.folds):
            fit, held = fold != k, fold == k
            # critical against the rest, as the saved figures were measured (the shipped model now learns the categories)
            clf = StepClassifier(ratio=args.ratio, random_state=args.seed, targets="binary").fit(data.X[fit], data.y[fit], groups=data.groups[fit])
            thresholds.append(float(clf.threshold_))
            index = [data.index[i] for i in np.flatnonzero(held)]
            chosen |= selections_from_proba(index, clf.predict_proba(data.X[held])[:, 1], args.ratio, clf.threshold_)
        timings["distill (cross-fitted)"] = time.perf_counter() - started
        agreement = evaluate_selections(chosen, labels, {t.id: t for t in train})
        _DISTILLED.update(chosen=chosen, meta={"folds": args.folds, "thresholds": thresholds, "features": "semantic,structural",
                                               "f1_vs_teacher_out_of_fold": agreement["f1"], "kappa_vs_teacher_out_of_fold": agreement["kappa"]})
    return _DISTILLED["chosen"], _DISTILLED["meta"]


# --- tuning and evaluation --------------------------------------------------------------------

def tune_on(name: str, args: argparse.Namespace, timings: dict[str, float]) -> Path:
    """QLoRA on `name`'s selection: same config, optimizer steps and seed for every selector."""
    from critstep.tuner import tune

    out = args.adapters_dir / name
    if (out / "tune_result.json").exists():
        return out
    config = tune_config(args)
    started = time.perf_counter()
    result = tune(args.selections_dir / f"{name}.jsonl", config, out, progress=False)
    timings[f"tune {name}"] = time.perf_counter() - started
    print(f"[tune] {name}: {result.steps} steps, train loss {result.train_loss:.4f}, {result.train_tokens_per_s:.0f} tokens/s, "
          f"{timings[f'tune {name}']:.0f} s", flush=True)
    return out


def tune_config(args: argparse.Namespace) -> Any:
    """The config file with --set overrides, the run's steps and seed; no internal eval split."""
    from critstep.tuner import TuneConfig
    from critstep.tuner.config import parse_override

    overrides = dict(parse_override(s) for s in args.sets)
    return TuneConfig.from_yaml(args.config, overrides | {"max_steps": args.steps, "seed": args.seed, "eval_fraction": 0.0, "save_every": 10})


def evaluate(name: str, adapter: Path | None, split: dict[str, Any], args: argparse.Namespace, timings: dict[str, float]) -> dict[str, Any]:
    """`critstep eval` offline on the evaluation split and live in ScienceWorld, as a subprocess each."""
    config = tune_config(args)
    common = ["--model", config.model, "--max-len", str(config.max_seq_len), "--batch-size", str(args.eval_batch), "--quiet"]
    common += ["--adapter", str(adapter)] if adapter is not None else []
    common += ["--device", args.device] if args.device else []
    base = args.eval_dir / name
    offline = base / "offline"
    _critstep(["eval", str(args.eval_dir / "eval.jsonl"), "--labels", str(args.eval_dir / "eval.labels.jsonl"), "--out", str(offline),
               "--steps-per-trajectory", str(args.steps_per_trajectory), "--max-new-tokens", str(args.eval_new_tokens), *common],
              offline, args, timings, f"eval {name}")
    out = {"offline": json.loads((offline / "eval.json").read_text()), "predictions": offline / "predictions.jsonl"}
    if args.live_episodes:
        live = base / "live"
        _critstep(["eval", "--env", "scienceworld", "--out", str(live), "--episodes", str(args.live_episodes), "--max-steps", str(args.live_max_steps),
                   "--max-new-tokens", str(args.live_new_tokens), *common], live, args, timings, f"live {name}")
        out["live"] = json.loads((live / "eval.json").read_text())
    return out


def _critstep(argv: list[str], out: Path, args: argparse.Namespace, timings: dict[str, float], stage: str) -> None:
    if (out / "eval.json").exists():
        return
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "critstep", *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    timings[stage] = time.perf_counter() - started
    print(f"[{stage}] {timings[stage]:.0f} s: {done.stdout.strip().splitlines()[-1][:160]}", flush=True)


# --- report -----------------------------------------------------------------------------------

def step_ratios(predictions: Path, ids: list[str]) -> dict[str, Any]:
    """Per trajectory (in `ids` order): (matches, steps) on all steps and on critical steps."""
    from critstep.evaluation.stats import ratio_of

    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        for key, keep in (("all", True), ("critical", p["critical"] is True)):
            if keep:
                for metric in ("exact", "normalized"):
                    cell = rows[p["id"]][f"{key}:{metric}"]
                    cell[0] += p[metric]
                    cell[1] += 1
    keys = [f"{k}:{m}" for k in ("all", "critical") for m in ("exact", "normalized")]
    return {key: ratio_of([tuple(rows[i][key]) for i in ids]) for key in keys}


def report(split: dict[str, Any], selections: dict[str, Any], evaluations: dict[str, Any], args: argparse.Namespace,
           timings: dict[str, float], wall: float) -> dict[str, Any]:
    from critstep.evaluation.stats import paired_difference, ratio_of, resample_weights

    ids = sorted({t.id for t in split["eval"]})
    weights = resample_weights(len(ids), seed=args.seed)
    ratios = {name: step_ratios(e["predictions"], ids) for name, e in evaluations.items()}
    episodes = {name: e["live"]["episodes"] for name, e in evaluations.items() if "live" in e}
    keys = sorted({(ep["task"], ep["variation"]) for eps in episodes.values() for ep in eps})
    live_weights = resample_weights(len(keys), seed=args.seed)

    def live_ratio(name: str) -> Any:
        by_key = {(ep["task"], ep["variation"]): ep["score"] for ep in episodes[name]}
        return ratio_of([(by_key[k], 1) for k in keys])

    models: dict[str, Any] = {}
    for name, e in evaluations.items():
        offline = e["offline"]
        entry: dict[str, Any] = {
            "offline": {"overall": offline["overall"], "per_env": offline["per_env"], "timing": offline["timing"]},
            "selection": None if name == "base" else {k: v for k, v in selections[name].items() if k != "distilled_model"},
        }
        for reference in ("all", "teacher"):
            if reference in ratios and name != reference:
                entry[f"vs_{reference}"] = {key: paired_difference(ratios[name][key], ratios[reference][key], weights)
                                            for key in ("all:normalized", "critical:normalized")}
                if name in episodes and reference in episodes:
                    entry[f"vs_{reference}"]["live_score"] = paired_difference(live_ratio(name), live_ratio(reference), live_weights)
        if "live" in e:
            entry["live"] = {"mean": e["live"]["mean"], "per_task": e["live"]["per_task"],
                             "episodes": [{k: ep[k] for k in ("task", "variation", "score", "success", "steps", "invalid_actions")} for ep in e["live"]["episodes"]]}
        if name != "base":
            tuned = json.loads((args.adapters_dir / name / "tune_result.json").read_text())
            entry["tuning"] = {"steps": tuned["steps"], "train_loss": tuned["train_loss"], "tokens_per_s": tuned["train_tokens_per_s"],
                               "data": {k: tuned["stats"]["train"][k] for k in ("trajectories", "windows", "selected_steps", "supervised_tokens", "window_tokens")}}
        models[name] = entry
    config = tune_config(args)
    return {
        "model": config.model,
        "config": args.config.name,
        "tuning": {"mode": config.mode, "optimizer_steps": args.steps, "seed": args.seed, "max_seq_len": config.max_seq_len,
                   "pack_tokens": config.batch_tokens, "grad_accum": config.grad_accum, "lr": config.lr, "lora_r": config.lora_r,
                   "overrides": args.sets},
        "data": {
            "train_trajectories": len(split["train"]), "train_steps": sum(t.n_steps for t in split["train"]),
            "eval_trajectories": len(split["eval"]), "eval_labeled": len(split["eval_labeled"]), "eval_unlabeled": len(split["unlabeled"]),
            "envs": list(ENVS), "steps_per_trajectory": args.steps_per_trajectory,
            "split": f"seed-labeled trajectories of {', '.join(ENVS)}: {args.train_share:.0%} tuned on (stable hash of the id, seed {args.seed}), "
                     f"the rest evaluated with their labels, plus {args.unlabeled_per_env} unlabeled successful corpus trajectories per env; heldout.jsonl not used",
        },
        "live": {"env": "scienceworld", "episodes_per_task": args.live_episodes, "max_steps": args.live_max_steps} if args.live_episodes else None,
        "models": models,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "wall_seconds": round(wall, 1),
        "machine": "shared 2-core CPU machine, loaded by other jobs" if not args.device or args.device == "cpu" else args.device,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'model':<10} {'$/1k traj':>10} {'selected':>9} {'match (norm.) all':>26} {'critical':>26} {'NLL':>7} {'live score':>22}")
    for name, m in result["models"].items():
        o = m["offline"]["overall"]
        sel = m["selection"]
        cost = "-" if sel is None else f"{sel['usd_per_1k']:.4f}"
        share = "-" if sel is None else f"{sel['share_selected']:.1%}"
        crit = o.get("critical", {})
        live = m.get("live", {}).get("mean", {})
        print(f"{name:<10} {cost:>10} {share:>9} {_ci(o['action_match_normalized'], o['ci95']['action_match_normalized']):>26} "
              f"{_ci(crit.get('action_match_normalized'), crit.get('ci95', {}).get('action_match_normalized')):>26} {o['nll']:>7.3f} "
              f"{_ci(live.get('score'), live.get('score_ci95'), 1):>22}")


def markdown_table(result: dict[str, Any]) -> str:
    """The README's table: every figure with its 95% interval, differences paired on the same trajectories."""
    rows = ["| model | selection $ / 1k traj | steps tuned on | action match, all steps | on teacher-critical steps | gold-turn NLL "
            "| live ScienceWorld score | vs `all`, all steps (paired) | vs `teacher`, all steps (paired) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        o, sel = m["offline"]["overall"], m["selection"]
        crit = o.get("critical", {})
        live = m.get("live", {}).get("mean", {})
        cost = "-" if sel is None else f"{sel['usd_per_1k']:.4f}"
        share = "-" if sel is None else f"{sel['share_selected']:.0%}"
        diffs = []
        for reference in ("all", "teacher"):
            d = m.get(f"vs_{reference}", {}).get("all:normalized")
            diffs.append(_ci(d["difference"], d["ci95"], signed=True) if d else "-")
        rows.append(f"| {name} | {cost} | {share} | {_ci(o['action_match_normalized'], o['ci95']['action_match_normalized'])} "
                    f"| {_ci(crit.get('action_match_normalized'), crit.get('ci95', {}).get('action_match_normalized'))} "
                    f"| {_ci(o['nll'], o['ci95'].get('nll'))} | {_ci(live.get('score'), live.get('score_ci95'), 1)} | {diffs[0]} | {diffs[1]} |")
    return "\n".join(rows)


def _ci(value: float | None, ci: list[float] | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-"
    sign = "+" if signed else ""
    return f"{value:{sign}.{digits}f} [{ci[0]:{sign}.{digits}f}, {ci[1]:{sign}.{digits}f}]" if ci else f"{value:{sign}.{digits}f}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out action match (normalized)", lambda m: (m["offline"]["overall"]["action_match_normalized"], m["offline"]["overall"]["ci95"]["action_match_normalized"])),
              ("on teacher-critical steps", lambda m: (m["offline"]["overall"]["critical"]["action_match_normalized"], m["offline"]["overall"]["critical"]["ci95"]["action_match_normalized"]))]
    if result["live"]:
        panels.append(("live ScienceWorld score (0-100)", lambda m: (m["live"]["mean"]["score"], m["live"]["mean"]["score_ci95"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4))
    names = [n for n in result["models"] if n != "base"]
    for ax, (title, get) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            m = result["models"][name]
            value, ci = get(m)
            x = m["selection"]["usd_per_1k"]
            err = [[value - ci[0]], [ci[1] - value]] if ci else None
            ax.errorbar([x], [value], yerr=err, fmt="o", capsize=4, label=name)
            ax.annotate(name, (x, value), textcoords="offset points", xytext=(6, 10 if i % 2 else -14), fontsize=8)
        base, base_ci = get(result["models"]["base"])
        ax.axhline(base, color="grey", linestyle="--", label="untuned base")
        if base_ci:
            ax.axhspan(base_ci[0], base_ci[1], color="grey", alpha=0.12)
        ax.set_xscale("symlog", linthresh=1e-3)  # $0 selectors at 0, the rest on a log scale
        ax.set_xlim(-1e-4, 30)
        ax.set_xlabel("selection cost, $ per 1,000 trajectories")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{result['model']}, QLoRA {result['tuning']['optimizer_steps']} steps per selection; 95% intervals over trajectories / episodes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
