"""Speed, memory and cost of the distilled selector's features on this machine.

Scores a random sample of corpus trajectories with each feature group (structural, progress,
semantic; token and hidden on a smaller sample), uncached (so the work is really done), and
projects to 1,000 corpus trajectories; the default groups' sum is held against the 10-minute
target. On a shared machine absolute speeds swing with the load, so the run also reports each
group's time per step relative to the structural group's, measured side by side. The token-feature pass is compared
with the small LM's raw forward throughput measured in the same run: the same inputs replayed
as bare forward passes. The window table shows how many tokens each window size makes the LM read (its cost).
Cost per 1,000 trajectories is set against GPT-4o labeling from the project price table.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/distill_speed.py [--sample 40] [--token-sample 12]

Prints figures and writes benchmarks/results/distill_speed.json.
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import time
from pathlib import Path

import numpy as np
import yaml
from _results import claim_results  # benchmarks/ is on sys.path

from critstep.distill.features import FeatureConfig, FeatureExtractor, hidden, progress, semantic, structural, token
from critstep.formats import read_trajectories
from critstep.io import write_result

ROOT = Path(__file__).resolve().parents[1]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def raw_throughput(model, inputs: list[dict]) -> float:  # type: ignore[no-untyped-def]
    """Tokens/s of bare forward passes over the very inputs the token pass fed the model
    (same shapes, same padding): the LM's ceiling for this work on this machine."""
    import torch

    tokens = sum(x["input_ids"].numel() for x in inputs)
    with torch.inference_mode():
        start = time.perf_counter()
        for x in inputs:
            model(**x)
    return tokens / (time.perf_counter() - start)


def window_tokens(trajectories, tokenizer, window: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(context-pass tokens, distinct no-context step tokens) the scorer reads for `window`."""
    ctx = noctx = 0
    for t in trajectories:
        r = token.render(t, tokenizer)
        for start, _ in token.windows(r, window):
            ctx += min(len(r.ids), start + window) - start
        noctx += sum(len(s) for s in {tuple(s) for s in r.step_ids})
    return ctx, noctx


def gpt4o_cost(trajectories) -> dict:  # type: ignore[no-untyped-def]
    """USD per 1,000 trajectories for GPT-4o labels, from configs/prices.yaml (chars/4 estimate)."""
    from critstep.selector.oracle.pricing import estimate_tokens, load_prices
    from critstep.selector.oracle.prompt import build_request

    prices = load_prices()
    prompt = completion = 0
    for t in trajectories:
        request = build_request(t, 0.3)
        prompt += estimate_tokens(request.messages)
        completion += 60 + 35 * request.cap  # the plan plus one short JSON entry per chosen step
    scale = 1000 / len(trajectories)
    return {
        "prices_as_of": prices.as_of,
        "prompt_tokens_per_trajectory": prompt / len(trajectories),
        "sync_usd_per_1k": prices.cost("gpt-4o", int(prompt * scale), int(completion * scale)),
        "batch_usd_per_1k": prices.cost("gpt-4o", int(prompt * scale), int(completion * scale), batch=True),
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "benchmark")
    parser.add_argument("--sample", type=int, default=40, help="trajectories for the semantic and structural groups")
    parser.add_argument("--token-sample", type=int, default=12, help="trajectories for the (slow) token group")
    parser.add_argument("--window", type=int, default=token.DEFAULT_WINDOW_TOKENS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_speed.json")
    args = parser.parse_args()
    claim_results("distill_speed", args.out)

    corpus = read_trajectories(args.shared / "corpus.jsonl")
    sample = random.Random(0).sample(corpus, args.sample)
    steps = sum(t.n_steps for t in sample)
    per_traj_corpus = sum(t.n_steps for t in corpus) / len(corpus)
    result: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads (shared, loaded machine)",
        "sample": {"trajectories": len(sample), "steps": steps, "corpus_steps_per_trajectory": per_traj_corpus},
        "groups": {},
    }
    print(f"sample: {len(sample)} corpus trajectories, {steps} steps; torch threads {torch.get_num_threads()}")

    def report(name: str, seconds: float, trajs, per_1k: float | None = None, **extra) -> None:  # type: ignore[no-untyped-def]
        n_steps = sum(t.n_steps for t in trajs)
        per_1k = per_1k if per_1k is not None else seconds / len(trajs) * 1000 / 60
        row = {"seconds": seconds, "trajectories": len(trajs), "steps_per_s": n_steps / seconds, "minutes_per_1k_trajectories": per_1k,
               "peak_rss_mib": peak_mib(), **extra}
        result["groups"][name] = row
        print(f"{name:<12} {n_steps / seconds:8.1f} steps/s  {per_1k:6.1f} min per 1,000 trajectories  peak RSS {row['peak_rss_mib']:.0f} MiB")

    start = time.perf_counter()
    for t in sample:
        structural.structural_features(t)
    report("structural", time.perf_counter() - start, sample)
    start = time.perf_counter()
    for t in sample:
        progress.progress_features(t)
    report("progress", time.perf_counter() - start, sample)

    fx = FeatureExtractor(FeatureConfig(), cache=None)
    load = time.perf_counter()
    fx.embedder()
    load = time.perf_counter() - load
    start = time.perf_counter()
    embeddings = fx.embeddings(sample)
    for t, e in zip(sample, embeddings, strict=True):
        semantic.similarity_features(t, e)
    report("semantic", time.perf_counter() - start, sample, model_load_s=load)

    scorer = fx.scorer()
    token_sample = sample[: args.token_sample]
    scorer.score(token_sample[:1])  # warm-up, not timed
    scorer.tokens_processed = 0
    scorer.record_inputs = []
    start = time.perf_counter()
    scorer.score(token_sample)
    seconds = time.perf_counter() - start
    rate = scorer.tokens_processed / seconds
    raw = raw_throughput(scorer.model, scorer.record_inputs)
    # Project from the whole sample's token count: the first trajectories may be lighter or heavier.
    sample_tokens = sum(window_tokens(sample, scorer.tokenizer, args.window)) / len(sample)
    report("token", seconds, token_sample, per_1k=sample_tokens * 1000 / rate / 60, tokens_per_s=rate, raw_forward_tokens_per_s=raw,
           share_of_raw=rate / raw, tokens_per_trajectory=sample_tokens, dtype=FeatureConfig().dtype)
    print(f"  token pass {rate:.0f} tokens/s vs bare forwards of the same inputs {raw:.0f} tokens/s ({rate / raw:.0%} of raw); "
          f"{sample_tokens:.0f} tokens per trajectory on the 40-trajectory sample -> "
          f"{result['groups']['token']['minutes_per_1k_trajectories']:.1f} min per 1,000")

    reader = fx.reader()
    reader.tokens_processed = 0
    start = time.perf_counter()
    states = reader.read(token_sample)
    seconds = time.perf_counter() - start
    assert all(h.shape[1] == len(hidden.READOUTS) for h in states)
    hidden_rate = reader.tokens_processed / seconds
    ctx_tokens = sum(window_tokens(sample, scorer.tokenizer, args.window)[:1]) / len(sample)
    report("hidden", seconds, token_sample, per_1k=ctx_tokens * 1000 / hidden_rate / 60, tokens_per_s=hidden_rate, tokens_per_trajectory=ctx_tokens)

    print("\nwindow size vs LM cost (tokens read per trajectory; same 40-trajectory sample):")
    windows = {}
    for w in (128, 256, 512, 1024):
        ctx, noctx = window_tokens(sample, scorer.tokenizer, w)
        per = (ctx + noctx) / len(sample)
        windows[w] = {"context_tokens_per_trajectory": ctx / len(sample), "nocontext_tokens_per_trajectory": noctx / len(sample),
                      "projected_minutes_per_1k": per * 1000 / rate / 60, "context_per_step_tokens": w // 4}
        print(f"  window {w:>5}: {per:7.0f} tokens/trajectory, >= {w // 4} context tokens per step, ~{windows[w]['projected_minutes_per_1k']:.0f} min per 1,000")
    result["windows"] = windows

    g = result["groups"]
    fast = sum(g[name]["minutes_per_1k_trajectories"] for name in FeatureConfig().groups)  # the default groups
    full = fast + g["token"]["minutes_per_1k_trajectories"]
    result["ratios_to_structural"] = {name: g["structural"]["steps_per_s"] / row["steps_per_s"] for name, row in g.items()}
    compute = yaml.safe_load((ROOT / "critstep" / "configs" / "compute_prices.yaml").read_text())["cpu"]["usd_per_hour"]
    result["projection_1k"] = {
        "default_features": list(FeatureConfig().groups),
        "default_features_minutes": fast,
        "all_features_minutes": full,
        "targets": {"default_features_minutes": 10, "token_minutes": 30},
        "cpu_usd_per_hour": compute,
        "distilled_usd_per_1k_default_features": fast / 60 * compute,
        "distilled_usd_per_1k_all_features": full / 60 * compute,
    }
    try:
        result["gpt4o"] = gpt4o_cost(sample)
        source = "configs/prices.yaml"
    except ImportError:
        result["gpt4o"] = {"sync_usd_per_1k": 7.0, "batch_usd_per_1k": 3.6}
        source = "the issue's estimate (pricing module absent)"
    p = result["projection_1k"]
    print("time per step relative to structural (same run): " + ", ".join(f"{k} {v:.0f}x" for k, v in result["ratios_to_structural"].items()))
    print(f"\n1,000 corpus trajectories: default features ({'+'.join(FeatureConfig().groups)}) {fast:.1f} min (target < 10), token features "
          f"{g['token']['minutes_per_1k_trajectories']:.1f} min (target < 30), all {full:.1f} min")
    print(f"cost per 1,000: distilled ${p['distilled_usd_per_1k_default_features']:.3f} (default features) / "
          f"${p['distilled_usd_per_1k_all_features']:.3f} (all) of CPU at ${compute}/h; GPT-4o "
          f"${result['gpt4o']['sync_usd_per_1k']:.2f} sync, ${result['gpt4o']['batch_usd_per_1k']:.2f} batch ({source})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, "distill_speed", result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
