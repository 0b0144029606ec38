"""The demo's tuning stage on a CPU shared with one other busy process: torch's defaults vs critstep's.

    .venv/bin/python benchmarks/demo_under_load.py --rounds 2 --steps 3

Starts one competing busy process (another torch job with torch's default threads, as a second
user's training would be), then runs the demo's QLoRA tuning of SmolLM2-135M (same data and
settings: the sample's training split with its recorded critical steps, windows of <= 1,024
tokens) for a few optimizer steps in fresh subprocesses, alternating two variants round by round
under the same competitor:

- `torch defaults`: one OpenMP thread per core, libgomp's spinning wait (what the demo did before);
- `critstep`: what the command line now sets before torch loads (`critstep.runtime`): threads for
  the free cores and `OMP_WAIT_POLICY=PASSIVE`.

Prints seconds per optimizer step and the ratio, and saves them to
benchmarks/results/demo_under_load.json. The machine's other load is recorded too: absolute
figures depend on it; the ratio is measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import claim_results  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo_under_load.json"
OMP_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")
COMPETITOR = "import torch\na = torch.randn(768, 768)\nwhile True:\n    a = torch.tanh(a @ a / 768)\n"


def child(variant: str, steps: int, data: Path, out: Path) -> None:
    """One measurement: configure like `variant`, load torch, tune `steps` steps, print JSON."""
    if variant == "critstep":
        from critstep.runtime import configure_cpu_threads

        configure_cpu_threads()
    import torch

    from critstep.tuner import TuneConfig, tune

    config = TuneConfig(model="smollm2-135m", mode="qlora", max_steps=steps, max_seq_len=1024, lr=5e-4, save_every=0, eval_fraction=0.0)
    started = time.perf_counter()
    result = tune(data, config, out, progress=False)
    wall = time.perf_counter() - started
    train = result.stats["train"]
    tokens_per_step = train["window_tokens"] / max(1, result.stats["micro_batches_per_epoch"])
    print(json.dumps({
        "variant": variant,
        "threads": torch.get_num_threads(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default (spin, then sleep)"),
        "tokens_per_s": result.train_tokens_per_s,
        "s_per_step": tokens_per_step / result.train_tokens_per_s,
        "wall_s": wall,
    }))


def prepare(directory: Path) -> Path:
    from critstep.demo import SAMPLE_DIR, split_heldout
    from critstep.formats import read_trajectories, write_trajectories
    from critstep.labels import read_labels, selections_from_labels

    trajectories = read_trajectories(SAMPLE_DIR / "trajectories.jsonl")
    train, _ = split_heldout(trajectories, 4)
    labels = read_labels(SAMPLE_DIR / "labels.jsonl", trajectories)
    path = directory / "train.selected.jsonl"
    write_trajectories(path, train, selections_from_labels(labels))
    return path


def run_variant(variant: str, steps: int, data: Path, directory: Path, n: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    load = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--child", variant, "--steps", str(steps), "--data", str(data), "--out", str(directory / f"{variant}-{n}")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["load_before"] = round(load, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per measurement")
    parser.add_argument("--no-competitor", action="store_true", help="measure without the extra busy process")
    parser.add_argument("--child", choices=["torch-defaults", "critstep"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.data, args.out)
        return
    claim_results("demo_under_load", RESULTS)

    from critstep.runtime import usable_cores

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="critstep-load-") as tmp:
        directory = Path(tmp)
        data = prepare(directory)
        competitor = None
        if not args.no_competitor:
            env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
            time.sleep(5)
        try:
            for r in range(args.rounds):
                order = ("torch-defaults", "critstep") if r % 2 == 0 else ("critstep", "torch-defaults")
                for variant in order:
                    row = run_variant(variant, args.steps, data, directory, r)
                    row["round"] = r
                    rows.append(row)
                    print(f"round {r} {variant:<15} {row['threads']} thread(s)  {row['s_per_step']:6.1f} s/step  "
                          f"(load {row['load_before']})", flush=True)
        finally:
            if competitor is not None:
                competitor.terminate()
                competitor.wait()

    summary = {}
    for variant in ("torch-defaults", "critstep"):
        values = [r["s_per_step"] for r in rows if r["variant"] == variant]
        summary[variant] = {"s_per_step_mean": statistics.mean(values), "s_per_step_min": min(values), "s_per_step_max": max(values)}
    ratio = summary["torch-defaults"]["s_per_step_mean"] / summary["critstep"]["s_per_step_mean"]
    print(f"\ntorch defaults {summary['torch-defaults']['s_per_step_mean']:.1f} s/step, critstep "
          f"{summary['critstep']['s_per_step_mean']:.1f} s/step: {ratio:.2f}x faster")
    result = {
        "what": "demo tuning stage (SmolLM2-135M QLoRA, windows <= 1024 tokens), seconds per optimizer step",
        "competitor": None if args.no_competitor else "one torch process, default threads, busy matmuls",
        "cores": usable_cores(),
        "rounds": args.rounds,
        "steps_per_run": args.steps,
        "runs": rows,
        "summary": summary,
        "speedup": ratio,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from critstep.io import write_result

    write_result(RESULTS, "demo_under_load", result)
    print(f"saved {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
