"""critstep's tuner against TRL's SFTTrainer, side by side in one run (`make install-bench` installs TRL).

Same model, trajectories, LoRA config (QLoRA: NF4 + double quantization), sequence length, optimizer
(AdamW, same rate, cosine decay to 10%, no warm-up: the two warm up differently), optimizer steps and seed. Every assistant step
is supervised on both sides (critstep with every step selected, TRL with `assistant_only_loss` through
a chat template with `{% generation %}` tags), so the two train on the same tokens:

- critstep: `critstep.tuner.tune` itself, windows packed padding-free (`pack_tokens` = seq len), the
  LM head at supervised positions only;
- TRL: `SFTTrainer` with `packing` (best-fit decreasing) + `padding_free`, one packed row of at most
  seq len tokens per step, and its default `nll` loss, which in TRL 1.16 is already the chunked one
  (a fused LM head computes log-probabilities in chunks, never the full logits; `chunked_nll` is an
  alias of it).

Only trajectories that fit in one sequence are used, so neither side truncates or windows. Each side
runs in its own process, and the sides alternate over rounds (each round a new seed), so a shared
machine's drifting load does not favour one. Reported per side: tokens/s over the timed steps (after
`--warmup`), peak memory during training (CPU: peak RSS after the model is loaded; GPU: peak
allocated), and the final training loss (mean of the last quarter of the steps). The supervised-token
masks are compared token for token: critstep's rendering with every step selected against the
`input_ids` and `labels` (from `assistant_masks`) TRL's own dataset preparation produces.

    .venv/bin/python benchmarks/tuner_vs_trl.py [--steps 8] [--rounds 3] [--seq-len 1024]
    # GPU: a Llama-3.1-8B-shaped model with random weights (SmolLM2's tokenizer), 4k-token sequences
    .venv/bin/python benchmarks/tuner_vs_trl.py --gpu-shape llama3-8b [--steps 20]

Prints a table and writes benchmarks/results/tuner_vs_trl[-SHAPE].json.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import claim_results  # noqa: E402
from tuner_speed import _rss_reset, _status_kb, random_model_dir  # noqa: E402  (the peak-RSS helpers, the GPU shapes)

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("critstep", "trl")

# SmolLM2-135M-Instruct's chat template (ChatML), with TRL's `{% generation %}` tags around what an
# assistant turn generates: its content and its end-of-turn token.
CHATML_GENERATION_TAGS = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --- data ---------------------------------------------------------------------------------------

def pick_trajectories(shared: Path, n: int, seq_len: int, tokenizer: Any) -> list[Any]:
    """Up to `n` corpus trajectories (envs in turn) whose whole rendering fits in `seq_len` tokens."""
    from itertools import zip_longest

    from critstep.formats import read_trajectories
    from critstep.tuner.render import render_trajectory

    by_env: dict[str, list[Any]] = {}
    for t in read_trajectories(shared / "corpus.jsonl"):
        if t.n_steps:
            by_env.setdefault(t.env or "", []).append(t)
    picked = []
    for t in (t for row in zip_longest(*by_env.values()) for t in row if t):
        if len(render_trajectory(t, list(range(t.n_steps)), tokenizer).input_ids) <= seq_len:
            picked.append(t)
            if len(picked) == n:
                break
    return picked


def trl_messages(trajectory: Any, template: str) -> list[dict[str, Any]]:
    """The messages exactly as critstep renders them (tool calls in the text where the template has none)."""
    from critstep.tuner.render import message_dicts

    return [{"role": m["role"], "content": m["content"]} for m in message_dicts(trajectory, template)]


def compare_masks(trajectories: list[Any], tokenizer: Any) -> dict[str, Any]:
    """critstep's supervised tokens (every step selected) against TRL's labels (its assistant masks), token for token."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from critstep.tuner.render import render_trajectory

    template = tokenizer.chat_template
    tokenizer.chat_template = CHATML_GENERATION_TAGS
    data = Dataset.from_list([{"messages": trl_messages(t, template)} for t in trajectories])
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, assistant_only_loss=True, max_length=None, report_to=[], use_cpu=not torch.cuda.is_available(),
                         bf16=False)
        prepared = SFTTrainer(model=tiny, args=args, train_dataset=data, processing_class=tokenizer).train_dataset
    tokenizer.chat_template = template
    same_ids = same_masks = 0
    differing_tokens = supervised = 0
    examples = []
    for t, row in zip(trajectories, prepared, strict=True):
        rendered = render_trajectory(t, list(range(t.n_steps)), tokenizer)
        ours = [label != -100 for label in rendered.labels()]
        theirs = [label != -100 for label in row["labels"]]  # built from TRL's assistant_masks, unshifted like ours
        same_ids += rendered.input_ids == list(row["input_ids"])
        if rendered.input_ids == list(row["input_ids"]) and ours == theirs:
            same_masks += 1
        else:
            diff = [k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b]
            differing_tokens += len(diff) + abs(len(ours) - len(theirs))
            if len(examples) < 3 and diff:
                k = diff[0]
                examples.append({"trajectory": t.id, "token": k, "critstep": ours[k], "trl": theirs[k],
                                 "text": tokenizer.decode(rendered.input_ids[max(0, k - 3): k + 3])})
        supervised += sum(ours)
    return {"trajectories": len(trajectories), "identical_input_ids": same_ids, "identical_masks": same_masks,
            "differing_tokens": differing_tokens, "supervised_tokens": supervised, "examples": examples}


# --- one side, in its own process ----------------------------------------------------------------

def _peak_reset(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _rss_reset()


def _peak_gib(cuda: bool) -> float:
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return _status_kb("VmHWM") / 2**20


def run_critstep(spec: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """`tune()` on the selection with every step selected; per-step records from its train_log.jsonl."""
    import torch

    from critstep.tuner import TuneConfig, tune
    from critstep.tuner import train as train_module

    cuda = torch.cuda.is_available()
    real_micro = train_module._micro_batches
    started = []

    def first_step_resets_the_peak(step, *args):
        if not started:
            started.append(step)
            _peak_reset(cuda)
        return real_micro(step, *args)

    train_module._micro_batches = first_step_resets_the_peak
    config = TuneConfig(model=spec["model"], mode="qlora", max_seq_len=spec["seq_len"], pack_tokens=spec["seq_len"],
                        eval_fraction=0.0, seed=spec["seed"], max_steps=spec["steps"], grad_accum=1, lr=spec["lr"],
                        warmup_ratio=spec["warmup_ratio"], lora_r=spec["lora_r"], lora_alpha=spec["lora_alpha"],
                        lora_dropout=spec["lora_dropout"], compute_dtype=spec["dtype"], optimizer="adamw", save_every=0,
                        attn_implementation=spec["attn"])
    out = workdir / f"critstep-{spec['seed']}"
    tune(spec["selection"], config, out, progress=False)
    peak = _peak_gib(cuda)
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps, last = [], 0.0
    for r in records:
        steps.append({"loss": r["loss"], "tokens": r["tokens"], "seconds": r["seconds"] - last})
        last = r["seconds"]
    return [{**s, "peak_gib": peak} for s in steps]


def run_trl(spec: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """SFTTrainer on the same trajectories and model, QLoRA as TRL's docs set it up."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from critstep.formats import read_trajectories
    from critstep.models import causal_lm_path
    from critstep.tuner.config import TuneConfig
    from critstep.tuner.modeling import choose_attention, compute_dtype

    cuda = torch.cuda.is_available()
    dtype = compute_dtype(TuneConfig(compute_dtype=spec["dtype"]), "cuda" if cuda else "cpu")
    path = causal_lm_path(spec["model"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = tokenizer.chat_template
    tokenizer.chat_template = CHATML_GENERATION_TAGS
    data = Dataset.from_list([{"messages": trl_messages(t, template)} for t in read_trajectories(spec["selection"])])
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization,
                                                 device_map={"": "cuda" if cuda else "cpu"},
                                                 attn_implementation=choose_attention(spec["attn"], "cuda" if cuda else "cpu").implementation)
    lora = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(workdir / f"trl-{spec['seed']}"), max_steps=spec["steps"], per_device_train_batch_size=1,
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=int(spec["steps"] * spec["warmup_ratio"]),
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, seed=spec["seed"], data_seed=spec["seed"],
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=not cuda,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=spec["seq_len"], packing=True, packing_strategy="bfd", padding_free=True, assistant_only_loss=True,
        loss_type="nll", logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
    )
    steps: list[dict[str, Any]] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            _peak_reset(cuda)

        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            steps.append({"start": time.perf_counter(), "tokens": 0})

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            steps[-1]["seconds"] = time.perf_counter() - steps[-1].pop("start")

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs and steps:
                steps[-1]["loss"] = logs["loss"]

    class CountingTrainer(SFTTrainer):
        def training_step(self, model, inputs, *a, **k):
            steps[-1]["tokens"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
            return super().training_step(model, inputs, *a, **k)

    trainer = CountingTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora,
                              callbacks=[Timer()])
    trainer.train()
    peak = _peak_gib(cuda)
    return [{**s, "peak_gib": peak} for s in steps]


def worker(spec_file: Path) -> None:
    spec = json.loads(spec_file.read_text())
    workdir = spec_file.parent
    steps = (run_critstep if spec["side"] == "critstep" else run_trl)(spec, workdir)
    print(json.dumps(steps))


# --- orchestration ----------------------------------------------------------------------------

def launch(spec: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    spec_file = workdir / f"{spec['side']}-{spec['seed']}.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_file)], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"{spec['side']} (seed {spec['seed']}) failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rounds: list[list[dict[str, Any]]], warmup: int) -> dict[str, Any]:
    """Tokens/s over each round's timed steps, peak memory, final loss (mean of the last quarter of steps)."""
    per_round = []
    for steps in rounds:
        timed = steps[warmup:]
        tail = steps[-max(1, len(steps) // 4):]
        per_round.append({"tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["seconds"] for s in timed),
                          "peak_gib": steps[-1]["peak_gib"], "final_loss": statistics.mean(s["loss"] for s in tail),
                          "tokens_per_step": statistics.mean(s["tokens"] for s in steps)})
    return {"rounds": per_round, **{k: statistics.mean(r[k] for r in per_round) for k in per_round[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-shape", help="random-weight model of this shape (see tuner_speed.py), e.g. llama3-8b")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per side and round (default 8; 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of tokens/s")
    parser.add_argument("--rounds", type=int, default=3, help="alternate the sides this many times (a new seed each)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence and per packed step (default 1024; 4096 on GPU)")
    parser.add_argument("--trajectories", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="compute dtype of both sides")
    parser.add_argument("--attn", default="auto", help="attention of both sides; auto: critstep's choice (flash varlen on CUDA if installed)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "benchmark")
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker))
        return
    out = ROOT / "benchmarks" / "results" / (f"tuner_vs_trl-{args.gpu_shape}.json" if args.gpu_shape else "tuner_vs_trl.json")
    claim_results("tuner_vs_trl", out)

    import torch

    from critstep.formats import write_trajectories
    from critstep.io import write_result
    from critstep.models import load_tokenizer
    from critstep.selection import Selection
    from critstep.tuner.config import TuneConfig
    from critstep.tuner.modeling import compute_dtype

    if not (args.shared / "corpus.jsonl").exists():
        raise SystemExit(f"the shared benchmark corpus is not at {args.shared} (pass --shared DIR)")
    seq_len = args.seq_len or (4096 if args.gpu_shape else 1024)
    steps = args.steps or (20 if args.gpu_shape else 8)
    cuda = torch.cuda.is_available()
    dtype = str(compute_dtype(TuneConfig(compute_dtype=args.dtype), "cuda" if cuda else "cpu")).removeprefix("torch.")
    with tempfile.TemporaryDirectory(prefix="tuner-vs-trl-") as tmp:
        workdir = Path(tmp)
        if args.gpu_shape:
            model = random_model_dir(args.gpu_shape, workdir, "bfloat16")
            label = f"{args.gpu_shape} (random weights), QLoRA"
        else:
            model = args.model
            label = f"{args.model}, QLoRA"
        tokenizer = load_tokenizer(model)
        trajectories = pick_trajectories(args.shared, args.trajectories, seq_len, tokenizer)
        selection = workdir / "all-steps.selected.jsonl"
        write_trajectories(selection, trajectories, {t.id: Selection(t.id, list(range(t.n_steps))) for t in trajectories})
        masks = compare_masks(trajectories, tokenizer)
        spec = {"model": model, "selection": str(selection), "seq_len": seq_len, "steps": steps, "lr": args.lr,
                "warmup_ratio": 0.0, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "dtype": args.dtype, "attn": args.attn}
        runs: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in SIDES}
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            for side in order:
                runs[side].append(launch({**spec, "side": side, "seed": r}, workdir))
        results = {side: summarise(runs[side], args.warmup) for side in SIDES}

    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results["critstep"]["rounds"], results["trl"]["rounds"], strict=True)]
    memory = [a["peak_gib"] / b["peak_gib"] for a, b in zip(results["critstep"]["rounds"], results["trl"]["rounds"], strict=True)]
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end)"
    print(f"{label}: {len(trajectories)} trajectories (<= {seq_len} tokens, every step supervised), {steps} steps per side "
          f"x {args.rounds} alternating rounds, {dtype} compute, on {device}")
    header = f"{'side':<10}{'tokens/s':>10}{'peak GiB':>10}{'final loss':>12}{'tokens/step':>13}"
    print(header)
    print("-" * len(header))
    for side in SIDES:
        r = results[side]
        print(f"{side:<10}{r['tokens_per_s']:>10.1f}{r['peak_gib']:>10.2f}{r['final_loss']:>12.4f}{r['tokens_per_step']:>13.0f}")
    print(f"critstep / TRL tokens/s: {statistics.mean(ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)}); "
          f"peak memory: {statistics.mean(memory):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in memory)})")
    print(f"supervised-token masks (every step selected): {masks['identical_masks']}/{masks['trajectories']} trajectories identical, "
          f"{masks['differing_tokens']} of {masks['supervised_tokens']} supervised tokens differ; "
          f"input ids identical in {masks['identical_input_ids']}/{masks['trajectories']}")
    import trl

    write_result(out, "tuner_vs_trl", {"setup": {k: v for k, v in spec.items() if k not in ("selection", "model")} | {
                         "label": label, "model": args.gpu_shape or args.model, "trajectories": len(trajectories), "rounds": args.rounds,
                         "warmup_steps_untimed": args.warmup, "compute_dtype": dtype, "device": device, "trl": trl.__version__},
                     "results": results, "tokens_per_s_ratio": ratios, "peak_memory_ratio": memory, "masks": masks})
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
