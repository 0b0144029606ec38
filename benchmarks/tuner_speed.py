"""Tuner speed and memory: critstep's path against a plain baseline, side by side in one run.

- critstep: windows packed padding-free (position ids restart per window, no cross-attention),
  the LM head and the loss computed at supervised positions only;
- baseline: the same windows per step as a padded batch (attention mask), full-vocabulary logits
  for every position and transformers' own loss: what a plain HF loop does.

Both train the same model in the same mode (QLoRA by default) on the same windows; each runs in its
own subprocess so its peak memory is its own. Tokens/s counts real (non-padding) tokens.

    # CPU: SmolLM2-135M on real corpus trajectories with their seed labels (a few steps each)
    .venv/bin/python benchmarks/tuner_speed.py [--steps 3] [--seq-len 1024] [--batch-tokens 2048]
    # GPU: a Llama-3.1-8B-shaped model with random weights on 4k-token trajectories, with MFU
    .venv/bin/python benchmarks/tuner_speed.py --gpu-shape llama3-8b [--steps 10]
    # the compute dtype: critstep in bf16 against critstep in fp32 (how the CPU default was chosen)
    .venv/bin/python benchmarks/tuner_speed.py --variants critstep:bfloat16,critstep:float32

Prints a table and writes benchmarks/results/tuner_speed[-SHAPE|-dtypes].json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import claim_results  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
# Model shapes with random weights. "tiny" exists to check this code path on any machine.
SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False),
    "tiny": dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU


# --- data ---------------------------------------------------------------------------------------

def real_windows(shared: Path, n: int, seq_len: int, model: str) -> list[dict[str, Any]]:
    """Windows from `n` corpus trajectories with their seed labels as the selection (env round-robin)."""
    from itertools import zip_longest

    from critstep.formats import read_trajectories
    from critstep.labels import read_labels
    from critstep.models import load_tokenizer
    from critstep.tuner.render import render_trajectory
    from critstep.tuner.windows import make_windows

    corpus = {t.id: t for t in read_trajectories(shared / "corpus.jsonl")}
    labels = read_labels(shared / "seed_labels.jsonl", corpus.values())
    by_env: dict[str, list[str]] = {}
    for i in labels:
        by_env.setdefault(corpus[i].env, []).append(i)
    ids = [i for row in zip_longest(*by_env.values()) for i in row if i][:n]
    tokenizer = load_tokenizer(model)
    out = []
    for i in ids:
        if labels[i].steps:
            rendered = render_trajectory(corpus[i], labels[i].steps, tokenizer)
            out.extend({"input_ids": w.input_ids, "labels": w.labels} for w in make_windows(rendered, seq_len))
    return out


def synthetic_windows(n: int, vocab: int, min_len: int, max_len: int, seed: int = 0) -> list[dict[str, Any]]:
    """Agent-like windows: a 300-token prompt, then (200 context, 100 step) blocks, 30% of steps selected."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        ids = [rng.randrange(vocab) for _ in range(length)]
        labels = [-100] * length
        pos = 300
        while pos + 300 <= length:
            if rng.random() < 0.3:
                labels[pos + 200 : pos + 300] = ids[pos + 200 : pos + 300]
            pos += 300
        if all(x == -100 for x in labels):
            labels[-100:] = ids[-100:]
        out.append({"input_ids": ids, "labels": labels})
    return out


# --- one variant, in its own process -----------------------------------------------------------

def _rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS watermark (Linux)
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from critstep.tuner.config import TuneConfig
    from critstep.tuner.loss import supervised_loss
    from critstep.tuner.modeling import load_model, make_optimizer
    from critstep.tuner.packing import collate, pack
    from critstep.tuner.train import make_accelerator
    from critstep.tuner.windows import Window

    variant = spec["variant"].split(":")[0]
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    config = TuneConfig(model=spec["model"], mode=spec["mode"], max_seq_len=spec["seq_len"], lora_dropout=0.0,
                        attn_implementation=spec["attn"], compute_dtype=spec["dtype"])
    # the tuner's own precision setup: mixed precision in the compute dtype, fp32 trainable weights
    accelerator, dtype = make_accelerator(config)
    device = accelerator.device
    model = load_model(config, device)
    model.train()
    model, optimizer = accelerator.prepare(model, make_optimizer(model, config, cuda))
    windows = [Window("w", w["input_ids"], w["labels"]) for w in spec["windows"]]

    # Both variants see the same windows in each step: critstep packs them into one padding-free
    # row, the baseline pads them to the longest (as a plain loop without length grouping would).
    groups = pack(windows, spec["batch_tokens"])
    random.Random(0).shuffle(groups)

    def step(group: list[Window]) -> tuple[int, int]:
        if variant == "critstep":
            batch = collate(group).to(device)
            loss, n = supervised_loss(model, batch)
            accelerator.backward(loss / n)
            return batch.n_tokens, batch.n_tokens
        width = max(map(len, group))
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        for r, w in enumerate(group):
            ids[r, : len(w)] = torch.tensor(w.input_ids)
            mask[r, : len(w)] = 1
            labels[r, : len(w)] = torch.tensor(w.labels)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device), use_cache=False)
        accelerator.backward(out.loss)
        return int(mask.sum()), ids.numel()

    def optimizer_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    schedule = [groups[(spec["offset"] + i) % len(groups)] for i in range(spec["warmup"] + spec["steps"])]
    for group in schedule[: spec["warmup"]]:
        step(group)
        optimizer_step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_kb("VmRSS")
    exact_rss = _rss_reset()
    real = padded = supervised = 0
    started = time.perf_counter()
    for group in schedule[spec["warmup"] :]:
        r, p = step(group)
        optimizer_step()
        real += r
        padded += p
        supervised += sum(w.n_supervised for w in group)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    result = {
        "variant": spec["variant"],
        "compute_dtype": str(dtype).removeprefix("torch."),
        "steps": spec["steps"],
        "tokens": real,
        "padded_tokens": padded,
        "supervised_tokens": supervised,
        "seconds": elapsed,
        "tokens_per_s": real / elapsed,
        "micro_batches_per_epoch": len(groups),
    }
    if cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["device"] = torch.cuda.get_device_name()
    else:
        result["peak_rss_gib"] = _status_kb("VmHWM") / 2**20
        result["peak_rss_above_start_gib"] = (_status_kb("VmHWM") - rss_before) / 2**20 if exact_rss else None
        result["device"] = f"cpu ({torch.get_num_threads()} threads)"
    result["flops_per_step"] = train_flops(accelerator.unwrap_model(model).config, schedule[spec["warmup"] :], variant)
    return result


def train_flops(config: Any, groups: list[list[Any]], variant: str) -> float:
    """Model FLOPs per step for LoRA/QLoRA: forward + activation gradients (no base-weight gradients).

    Per token: 2·N_linear (forward) + 2·N_linear (input gradients); per window of T tokens, causal
    attention 2·L·T²·d forward and twice that backward. The LM head counts 4·V·d per position where it runs: supervised
    positions for critstep, every position for the baseline. Recomputation is not counted.
    """
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    linear = layers * (d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size)
    total = 0.0
    for group in groups:
        for w in group:
            t = len(w)
            total += t * 4 * linear + 6 * layers * t * t * d
            head_positions = w.n_supervised if variant == "critstep" else t
            total += head_positions * 4 * vocab * d
    return total / max(1, len(groups))


# --- orchestration ----------------------------------------------------------------------------

def random_model_dir(shape: str, workdir: Path, dtype: str) -> str:
    """Save a randomly initialised model of `shape` (with the SmolLM2 tokenizer, ids only matter)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from critstep.models import load_tokenizer

    path = workdir / f"random-{shape}"
    config = LlamaConfig(**SHAPES[shape])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialised directly in `dtype` on the GPU: 16 GB for 8B, in seconds
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    load_tokenizer("smollm2-135m").save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return str(path)


def launch(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    spec_file = workdir / f"{spec['variant']}.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_file)], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{spec['variant']} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's rounds as one result: summed tokens and time, the highest peak memory."""
    out = dict(runs[0])
    for key in ("steps", "tokens", "padded_tokens", "supervised_tokens", "seconds"):
        out[key] = sum(r[key] for r in runs)
    for key in ("peak_memory_gib", "peak_rss_gib", "peak_rss_above_start_gib"):
        if out.get(key) is not None:
            out[key] = max(r[key] for r in runs)
    out["tokens_per_s"] = out["tokens"] / out["seconds"]
    out["flops_per_step"] = sum(r["flops_per_step"] * r["steps"] for r in runs) / out["steps"]
    out["rounds"] = len(runs)
    return out


def ratio_spread(runs: list[dict[str, Any]], variants: list[str]) -> list[float]:
    """The first variant's tokens/s over the second's, round by round (runs alternate the variants)."""
    first = [r for r in runs if r["variant"] == variants[0]]
    second = [r for r in runs if r["variant"] == variants[1]]
    return [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(first, second, strict=True)]


def mfu(result: dict[str, Any]) -> float | None:
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in result.get("device", "")), None)
    if peak is None:
        return None
    return result["flops_per_step"] * result["steps"] / result["seconds"] / peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-shape", choices=sorted(SHAPES), help="random-weight model of this shape on synthetic trajectories")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--mode", choices=["qlora", "lora", "full"], default="qlora")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the variants this many times")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-tokens", type=int, default=None, help="real tokens per step (default: 2 x seq-len)")
    parser.add_argument("--trajectories", type=int, default=24)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "benchmark")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="compute dtype of every variant")
    parser.add_argument("--variants", default="critstep,baseline",
                        help="comma-separated NAME[:DTYPE], NAME critstep or baseline (e.g. critstep:bfloat16,critstep:float32)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_variant(json.loads(Path(args.worker).read_text()))))
        return
    variants = args.variants.split(",")
    name = f"tuner_speed-{args.gpu_shape}" if args.gpu_shape else "tuner_speed" if variants[1] == "baseline" else "tuner_speed-dtypes"
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    claim_results("tuner_speed", out)

    with tempfile.TemporaryDirectory(prefix="tuner-speed-") as tmp:
        workdir = Path(tmp)
        if args.gpu_shape:
            seq_len = args.seq_len or 4096
            model = random_model_dir(args.gpu_shape, workdir, "bfloat16")
            windows = synthetic_windows(24, SHAPES[args.gpu_shape]["vocab_size"], seq_len * 3 // 8, seq_len)
            steps, batch_tokens = args.steps or 10, args.batch_tokens or 2 * seq_len
            label = f"{args.gpu_shape} (random weights), {args.mode}"
        else:
            seq_len = args.seq_len or 1024
            model = args.model
            windows = real_windows(args.shared, args.trajectories, seq_len, model)
            steps, batch_tokens = args.steps or 3, args.batch_tokens or 2 * seq_len
            label = f"{model}, {args.mode}"
        spec = {"model": model, "mode": args.mode, "seq_len": seq_len, "windows": windows, "steps": steps, "warmup": args.warmup,
                "batch_tokens": batch_tokens, "attn": args.attn, "dtype": args.dtype}
        # Variants alternate over rounds (each on the next stretch of the same data), so a machine
        # whose load drifts during the run (a shared one) does not favour whichever ran first.
        runs = [launch({**spec, "variant": v, "dtype": v.split(":")[1] if ":" in v else args.dtype,
                        "offset": r * (steps + args.warmup)}, workdir)
                for r in range(args.rounds) for v in variants]
        results = [combine([run for run in runs if run["variant"] == v]) for v in variants]
        spread = ratio_spread(runs, variants)

    for r in results:
        r["mfu"] = mfu(r)
    memory_key = "peak_memory_gib" if "peak_memory_gib" in results[0] else "peak_rss_gib"
    print(f"{label}: {len(windows)} windows (<= {seq_len} tokens), ~{batch_tokens} tokens/step, {steps * args.rounds} timed steps each ({args.rounds} alternating rounds), on {results[0]['device']}")
    header = f"{'variant':<20}{'tokens/s':>11}{'peak GiB':>10}{'pad share':>11}{'supervised':>12}{'MFU':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        pad = 1 - r["tokens"] / r["padded_tokens"]
        m = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['variant']:<20}{r['tokens_per_s']:>11.1f}{r[memory_key]:>10.2f}{pad:>11.1%}{r['supervised_tokens'] / r['tokens']:>12.1%}{m:>8}")
    speedup = results[0]["tokens_per_s"] / results[1]["tokens_per_s"]
    print(f"{variants[0]} / {variants[1]} tokens/s: {speedup:.2f}x (per round: {', '.join(f'{x:.2f}' for x in spread)}); "
          f"peak memory {results[0][memory_key]:.2f} vs {results[1][memory_key]:.2f} GiB")
    from critstep.io import write_result

    write_result(out, "tuner_speed", {"setup": {k: v for k, v in spec.items() if k != "windows"} | {"windows": len(windows), "label": label},
                     "results": results, "speedup": speedup, "speedup_per_round": spread})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
