"""Speed of `critstep eval` offline on CPU: steps/s and the share of time spent generating, against
the straightforward way (per step: one forward pass for the gold turn's NLL, then `generate` from
the prompt), measured side by side on the same steps in alternating rounds.

    nice -n 5 .venv/bin/python benchmarks/eval_speed.py      # writes benchmarks/results/eval_speed.json

Both variants see the same windows (prompt = head + history up to --max-len) and produce the same
greedy tokens; critstep reads each window once, takes every step's prompt from its KV cache and
decodes the steps of several windows in one batch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _results import claim_results  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmark"
RESULTS = Path(__file__).resolve().parent / "results"
ENVS = ("alfworld", "sciworld", "qa-search", "tau-airline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--per-env", type=int, default=2, help="seed-labeled trajectories per env")
    ap.add_argument("--steps-per-trajectory", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    claim_results("eval_speed", args.out / "eval_speed.json")

    import torch

    from critstep.evaluation.local import LocalModel
    from critstep.evaluation.offline import spread_steps
    from critstep.formats import read_trajectories
    from critstep.io import write_result
    from critstep.labels import read_labels

    torch.set_num_threads(args.threads)
    corpus = read_trajectories(args.data / "corpus.jsonl")
    labeled = read_labels(args.data / "seed_labels.jsonl")
    trajectories = [t for env in ENVS for t in [t for t in corpus if t.env == env and t.id in labeled][: args.per_env]]
    items = [(t, spread_steps(t.n_steps, args.steps_per_trajectory)) for t in trajectories]
    n_steps = sum(len(s) if s is not None else t.n_steps for t, s in items)
    lm = LocalModel.load(args.model, device="cpu", max_len=args.max_len, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    runs: dict[str, list[dict[str, float]]] = {"critstep": [], "per-step generate": []}
    outputs: dict[str, list[str]] = {}
    for r in range(args.rounds):
        for name in (runs if r % 2 == 0 else reversed(list(runs))):
            result, texts = critstep_variant(lm, items) if name == "critstep" else naive_variant(lm, items)
            runs[name].append(result)
            outputs[name] = texts
            print(f"round {r} {name}: {result['steps_per_s']:.3f} steps/s, generation {result['generation_share']:.0%}", flush=True)
    same = sum(a == b for a, b in zip(outputs["critstep"], outputs["per-step generate"], strict=True))
    summary = {name: {k: sum(x[k] for x in rs) / len(rs) for k in rs[0]} for name, rs in runs.items()}
    result = {
        "model": args.model,
        "trajectories": len(trajectories), "steps": n_steps, "envs": list(ENVS),
        "settings": {"max_len": args.max_len, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "threads": args.threads,
                     "rounds": args.rounds, "dtype": "float32"},
        "variants": summary,
        "rounds": runs,
        "speedup": summary["critstep"]["steps_per_s"] / summary["per-step generate"]["steps_per_s"],
        "identical_generations": f"{same} of {len(outputs['critstep'])}",
        "machine": "shared 2-core CPU machine, loaded by other jobs (ratios measured side by side)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / "eval_speed.json", "eval_speed", result)
    print(f"critstep {summary['critstep']['steps_per_s']:.3f} steps/s (generation {summary['critstep']['generation_share']:.0%}), "
          f"per-step generate {summary['per-step generate']['steps_per_s']:.3f} steps/s: {result['speedup']:.2f}x; "
          f"identical generations {result['identical_generations']}")


def critstep_variant(lm: Any, items: list[Any]) -> tuple[dict[str, float], list[str]]:
    from critstep.evaluation.agent import Timing

    lm.timing = Timing()
    started = time.perf_counter()
    texts = [o.generated for _, outputs in lm.evaluate_trajectories(items) for o in outputs]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps_per_s": len(texts) / seconds, "generation_share": lm.timing.decode_s / seconds,
            "prompt_tokens": lm.timing.prompt_tokens}, texts


def naive_variant(lm: Any, items: list[Any]) -> tuple[dict[str, float], list[str]]:
    """Per step: the window up to the end of its gold turn for the NLL, then `generate` from its prompt."""
    import torch
    import torch.nn.functional as F

    from critstep.evaluation.windows import eval_windows

    texts: list[str] = []
    generating = 0.0
    prompt_tokens = 0
    started = time.perf_counter()
    for t, steps in items:
        rendered = lm.render(t)
        for window in eval_windows(rendered, lm.max_len, steps):
            ids = [rendered.input_ids[p] for p in window.positions]
            for s, e in window.spans:
                with torch.no_grad():
                    full = torch.tensor([ids[:e]])
                    logits = lm.model(input_ids=full).logits[0, s - 1 : e - 1].float()
                    F.cross_entropy(logits, full[0, s:e])
                    prompt = torch.tensor([ids[:s]])
                    began = time.perf_counter()
                    out = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=lm.max_new_tokens,
                                            eos_token_id=sorted(lm.stop_ids), pad_token_id=lm.tokenizer.pad_token_id)
                    generating += time.perf_counter() - began
                prompt_tokens += e + s
                texts.append(lm._text([tok for tok in out[0, s:].tolist() if tok not in lm.stop_ids]))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps_per_s": len(texts) / seconds, "generation_share": generating / seconds, "prompt_tokens": prompt_tokens}, texts


if __name__ == "__main__":
    main()
