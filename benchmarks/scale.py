"""Selection past one machine: memory that stays flat, Ray's throughput and overhead, a 10M plan.

    nice -n 5 python benchmarks/scale.py                      # all three parts (~20 min on 2 loaded cores)
    python benchmarks/scale.py --skip-throughput              # memory only (~10 min)

1. Peak RSS of `critstep select` (plain engine, the random selector, so the run is bound by
   reading, parsing and writing, the part that grows with the input) on 1x, 4x and 16x the corpus: the
   copies are shards of the corpus with new ids (`<id>#copy<k>`), zstd-compressed. Beside it, the
   peak RSS of loading the same input into a list, which is what streaming avoids.
2. Throughput of the shipped distilled model (semantic + structural features computed, no cache)
   on a sample of the corpus: the plain engine, then `--engine ray` with 1 and 2 workers, in one
   run, interleaved over rounds; their outputs must be byte-identical.
3. A plan for 10M trajectories from these figures, the token-feature cost measured by
   benchmarks/distill_speed.py, the compute prices in configs/compute_prices.yaml and GPT-4o
   Batch API prices (configs/prices.yaml) applied to `critstep label --dry-run` on the corpus.

Prints tables and saves benchmarks/results/scale.json (no absolute paths).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import claim_results  # benchmarks/ is on sys.path

from critstep.configs import resolve_config
from critstep.distill.persistence import default_model_dir
from critstep.io import read_result, write_result

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmark"
RESULTS = REPO / "benchmarks" / "results" / "scale.json"
SHIPPED_MODEL = default_model_dir()
PEAK = """
import json, resource, sys, time
from critstep.cli import cli
start = time.perf_counter()
try:
    cli.main(args=sys.argv[1:], prog_name="critstep", standalone_mode=False)
finally:
    print("PEAK " + json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                "seconds": time.perf_counter() - start}), file=sys.stderr)
"""
LOAD_ALL = """
import json, resource, sys
from critstep.formats import read_trajectories
n = len(read_trajectories(sys.argv[1]))
print("PEAK " + json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "trajectories": n}), file=sys.stderr)
"""
TEN_M = 10_000_000


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def measured(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    line = next(x for x in reversed(proc.stderr.splitlines()) if x.startswith("PEAK "))
    return json.loads(line[5:]) | {"stdout": proc.stdout.strip()}


def critstep(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "critstep", *args], capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        raise SystemExit(f"failed: critstep {' '.join(args)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout.strip()


def make_copies(work: Path, copies: int) -> Path:
    """`copies` zstd shards of the corpus, ids made unique per copy."""
    import zstandard

    d = work / "copies"
    d.mkdir(exist_ok=True)
    lines = (SHARED / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    for k in range(copies):
        path = d / f"copy-{k:02d}.jsonl.zst"
        if path.exists():
            continue
        out = []
        for line in lines:
            record = json.loads(line)
            record["id"] = f"{record['id']}#copy{k}"
            out.append(json.dumps(record, ensure_ascii=False))
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(("\n".join(out) + "\n").encode()))
    return d


def memory(work: Path, multiples: list[int], batch_size: int) -> list[dict]:
    copies = make_copies(work, max(multiples))
    rows = []
    for m in multiples:
        shards = [copies / f"copy-{k:02d}.jsonl.zst" for k in range(m)]
        glob_source = str(copies / f"m{m}")
        Path(glob_source).mkdir(exist_ok=True)
        for s in shards:  # a directory per multiple, its shards linked in
            link = Path(glob_source) / s.name
            if not link.exists():
                link.symlink_to(s)
        out = work / f"out-{m}x"
        select = measured(PEAK, "select", glob_source, "--selector", "random", "--batch-size", str(batch_size), "--out", str(out))
        loaded = measured(LOAD_ALL, glob_source)
        n = int(re.search(r"in ([\d,]+) trajectories", select["stdout"]).group(1).replace(",", ""))
        rows.append({"multiple": m, "shards": m, "trajectories": n, "select_peak_rss_mib": round(select["peak_rss_mib"], 1),
                     "select_seconds": round(select["seconds"], 1), "load_all_peak_rss_mib": round(loaded["peak_rss_mib"], 1)})
        print(f"{m:>3}x  {n:>7,} trajectories  select peak RSS {select['peak_rss_mib']:7.1f} MiB ({select['seconds']:.0f} s)   "
              f"load-all {loaded['peak_rss_mib']:7.1f} MiB", flush=True)
    return rows


def id_memory(n: int) -> dict:
    """Bytes per id of the duplicate check (sorted 64-bit hashes) against a set of the id strings."""
    import tracemalloc

    from critstep.formats import IdRegistry

    ids = [f"knowagent-alfworld/D0/pick_and_place_simple-Pencil-None-Shelf-308/{i}#copy{i % 16}" for i in range(n)]
    out = {"ids": n, "id_chars": round(sum(map(len, ids)) / n, 1)}
    for name, make in (("hash_array", IdRegistry), ("string_set", set)):
        tracemalloc.start()
        registry = make()
        for i in ids:
            registry.add(i)
        size, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # the string set holds the strings themselves, which the hash array does not keep
        strings = sum(sys.getsizeof(i) for i in ids) if name == "string_set" else 0
        out[name] = {"bytes_per_id": round((size + strings) / n, 1), "peak_bytes_per_id": round((peak + strings) / n, 1)}
        del registry
    print(f"duplicate check, {n:,} ids: {out['hash_array']['bytes_per_id']} bytes/id (peak {out['hash_array']['peak_bytes_per_id']}) "
          f"vs a set of the strings {out['string_set']['bytes_per_id']}", flush=True)
    return out


def throughput(work: Path, n: int, batch_size: int, rounds: int) -> dict:
    lines = (SHARED / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    step = max(1, len(lines) // n)
    sample = work / "sample.jsonl"
    sample.write_text("\n".join(lines[::step][:n]) + "\n", encoding="utf-8")
    engines = {"plain": [], "ray-1": ["--engine", "ray", "--num-workers", "1"], "ray-2": ["--engine", "ray", "--num-workers", "2"]}
    times: dict[str, list[float]] = {k: [] for k in engines}
    outputs: dict[str, bytes] = {}
    for r in range(rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in order:
            out = work / f"thr-{name}.jsonl"
            seconds, _ = critstep("select", str(sample), "--model", str(SHIPPED_MODEL), "--no-cache", "--batch-size", str(batch_size),
                                  "--out", str(out), *engines[name])
            times[name].append(seconds)
            data = out.read_bytes()
            if name in outputs and outputs[name] != data:
                raise SystemExit(f"{name}: two rounds wrote different selections")
            outputs[name] = data
            print(f"round {r + 1} {name:<6} {seconds:6.1f} s  ({n / seconds:.2f} trajectories/s)", flush=True)
    identical = len(set(outputs.values())) == 1
    best = {k: min(v) for k, v in times.items()}
    return {
        "trajectories": n, "batch_size": batch_size, "rounds": rounds, "seconds": {k: [round(x, 1) for x in v] for k, v in times.items()},
        "trajectories_per_s": {k: round(n / v, 3) for k, v in best.items()},
        "ray_1_worker_overhead": round(best["ray-1"] / best["plain"] - 1, 3),
        "ray_2_worker_speedup_vs_plain": round(best["plain"] / best["ray-2"], 3),
        "outputs_identical": identical,
    }


def plan(thr: dict | None, cpu_price: float, gpu_price: float, gpu_tokens_per_s: float) -> dict:
    """10M trajectories: CPU-only, token features on CPU, token features on GPU, GPT-4o Batch."""
    speed = json.loads((REPO / "benchmarks" / "results" / "distill_speed.json").read_text())
    token = speed["groups"]["token"]
    core_s_token = token["minutes_per_1k_trajectories"] * 60 / 1000 * 2  # measured with 2 torch threads
    tokens_per_traj = speed["windows"]["512"]["context_tokens_per_trajectory"] + speed["windows"]["512"]["nocontext_tokens_per_trajectory"]
    # Per-trajectory cost from the quiet measurement (the throughput run shares a loaded machine);
    # a Ray worker adds its measured overhead over the plain run, never less than nothing.
    core_s = speed["groups"]["semantic"]["minutes_per_1k_trajectories"] * 60 / 1000 * 2
    core_s_ray = core_s * (1 + max(0.0, thr["ray_1_worker_overhead"])) if thr is not None else core_s
    _, dry = critstep("label", str(SHARED / "corpus.jsonl"), "--dry-run")
    corpus_n = int(re.search(r"([\d,]+) trajectories", dry).group(1).replace(",", ""))
    standard, batch = (float(x.replace(",", "")) for x in re.search(r"\$([\d,.]+) \(Batch API: \$([\d,.]+)\)", dry).groups())
    nodes = 100  # 2-vCPU machines of configs/compute_prices.yaml
    cpu_core_hours = TEN_M * max(core_s, core_s_ray) / 3600
    cpu_token_core_hours = TEN_M * core_s_token / 3600
    gpu_hours = TEN_M * tokens_per_traj / gpu_tokens_per_s / 3600
    return {
        "cpu_only": {"core_seconds_per_trajectory": round(max(core_s, core_s_ray), 3), "core_hours": round(cpu_core_hours),
                     "hours_on_100_nodes": round(cpu_core_hours / (2 * nodes), 1), "usd": round(cpu_core_hours / 2 * cpu_price)},
        "token_features_cpu": {"extra_core_seconds_per_trajectory": round(core_s_token, 3), "core_hours": round(cpu_core_hours + cpu_token_core_hours),
                               "hours_on_100_nodes": round((cpu_core_hours + cpu_token_core_hours) / (2 * nodes), 1),
                               "usd": round((cpu_core_hours + cpu_token_core_hours) / 2 * cpu_price)},
        "token_features_gpu": {"tokens_per_trajectory": round(tokens_per_traj), "assumed_gpu_tokens_per_s": gpu_tokens_per_s,
                               "gpu_hours": round(gpu_hours), "gpu_usd": round(gpu_hours * gpu_price),
                               "plus_cpu_usd": round(cpu_core_hours / 2 * cpu_price)},
        "gpt4o": {"corpus_trajectories": corpus_n, "corpus_usd_standard": standard, "corpus_usd_batch": batch,
                  "usd_standard_10m": round(standard / corpus_n * TEN_M), "usd_batch_10m": round(batch / corpus_n * TEN_M)},
        "prices": {"cpu_usd_per_hour_2vcpu": cpu_price, "gpu_usd_per_hour": gpu_price},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="Scratch directory (default: a temporary one).")
    parser.add_argument("--multiples", default="1,4,16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--throughput-n", type=int, default=64, help="Trajectories in the throughput sample.")
    parser.add_argument("--throughput-batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gpu-tokens-per-s", type=float, default=50_000.0,
                        help="ASSUMED forward throughput of smollm2-135m on one L4 (not measured here: no GPU).")
    parser.add_argument("--ids", type=int, default=1_000_000, help="Ids for the duplicate-check memory figure.")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not (SHARED / "corpus.jsonl").exists():
        raise SystemExit(f"needs the shared benchmark data at {SHARED}")
    claim_results("scale", RESULTS)
    import yaml

    compute = yaml.safe_load(resolve_config("configs/compute_prices.yaml").read_text())
    work = args.work or Path(tempfile.mkdtemp(prefix="critstep-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    result = read_result(RESULTS, "scale")
    result["machine"] = f"{os.cpu_count()} cores, shared; load average at start {os.getloadavg()[0]:.1f}"
    if not args.skip_memory:
        result["memory"] = memory(work, [int(m) for m in args.multiples.split(",")], args.batch_size)
        base = result["memory"][0]["select_peak_rss_mib"]
        result["memory_growth_largest_vs_1x"] = round(result["memory"][-1]["select_peak_rss_mib"] / base - 1, 3)
    result["id_memory"] = id_memory(args.ids)
    if not args.skip_throughput:
        result["throughput"] = throughput(work, args.throughput_n, args.throughput_batch_size, args.rounds)
        print(json.dumps(result["throughput"], indent=2))
    result["load_average_at_end"] = round(os.getloadavg()[0], 1)
    result["plan_10m"] = plan(result.get("throughput"), compute["cpu"]["usd_per_hour"], compute["gpu"]["usd_per_hour"], args.gpu_tokens_per_s)
    print(json.dumps(result["plan_10m"], indent=2))
    write_result(RESULTS, "scale", result)
    print(f"saved {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
