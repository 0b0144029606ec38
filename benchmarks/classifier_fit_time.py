"""What learning the teacher's categories costs: fit and scoring time of the step classifier, binary against categories.

Fits `StepClassifier` (its inner calibration folds included, as `critstep distill` and `distill
--base` do) on the shipped model's training rows (the 306 seed trajectories' 5,509 steps), with
`targets="binary"` and `targets="categories"` alternating for `--rounds` rounds in one process, so
both see the same load; each fitted model then scores the same rows (what `select` adds to the
features, whose cost distill_speed.py measures: semantic features run at ~85 steps/s here).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classifier_fit_time.py [--rounds 3]

Writes benchmarks/results/classifier_fit_time.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _results import claim_results  # benchmarks/ is on sys.path

from critstep.distill.estimator import TARGETS, StepClassifier
from critstep.distill.persistence import default_model_dir, load_model
from critstep.io import write_result

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "classifier_fit_time.json")
    args = parser.parse_args()
    claim_results("classifier_fit_time", args.out)
    rows = load_model(default_model_dir()).training_rows()
    seconds: dict[str, list[float]] = {t: [] for t in TARGETS}
    steps_per_second: dict[str, list[float]] = {t: [] for t in TARGETS}
    for r in range(args.rounds):
        for targets in TARGETS:
            start = time.perf_counter()
            clf = StepClassifier(targets=targets).fit(rows.X, rows.y, groups=rows.groups, categories=rows.categories)
            seconds[targets].append(time.perf_counter() - start)
            start = time.perf_counter()
            clf.predict_proba(rows.X)
            steps_per_second[targets].append(len(rows.y) / (time.perf_counter() - start))
            print(f"round {r + 1}: {targets:<10} fit {seconds[targets][-1]:.1f} s, scores {steps_per_second[targets][-1]:,.0f} steps/s",
                  flush=True)
    ratios = [c / b for c, b in zip(seconds["categories"], seconds["binary"], strict=True)]
    result = {"rows": len(rows.y), "columns": int(rows.X.shape[1]), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
              "load_average": os.getloadavg()[0], "seconds": seconds, "categories_over_binary": ratios,
              "scoring_steps_per_second": steps_per_second}
    print(f"fit, categories / binary: {np.mean(ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)}); scoring: "
          + ", ".join(f"{t} {np.mean(v):,.0f} steps/s" for t, v in steps_per_second.items()))
    write_result(args.out, "classifier_fit_time", result)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
