"""The tuning recipe: data -> model -> loop -> adapter, readable top to bottom (torchtune-style).

Mixed precision is accelerate's: trainable weights in fp32, forward and backward under autocast in
the compute dtype (see modeling.py). Under `accelerate launch` every process takes its own share of
each step's micro-batches; the supervised-token count is summed over processes before the loss is
normalised, so every token weighs the same whichever process holds it, and only the main process
writes. Resumable: accelerate's state (trainable weights, optimizer, scheduler, each process's RNG)
is saved every `save_every` steps and at the end with a fingerprint of the config and data
(checkpoint.py); `tune` continues from it when it matches. The micro-batch order is a pure function
of (seed, step), so a resumed run sees exactly the data the interrupted one would have seen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critstep.errors import InputError
from critstep.io import atomic_write, check_replaceable_dir, claim_output_dir, portable_path, write_json, write_jsonl
from critstep.models import CAUSAL_LMS, causal_lm_path, load_tokenizer
from critstep.trajectory import Trajectory
from critstep.tuner import checkpoint
from critstep.tuner.config import TuneConfig
from critstep.tuner.data import build_windows, load_selection, render_all, split, supervised_texts
from critstep.tuner.loss import supervised_loss
from critstep.tuner.modeling import (
    attention_used,
    choose_attention,
    compute_dtype,
    load_model,
    make_optimizer,
    make_scheduler,
    mixed_precision,
    prepare_fsdp,
)
from critstep.tuner.packing import collate, pack
from critstep.tuner.render import load_chat_template
from critstep.tuner.windows import Window

log = logging.getLogger(__name__)

CONFIG_FILE = "critstep_tune.yaml"
STATS_FILE = "data_stats.json"
RESULT_FILE = "tune_result.json"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class TuneResult:
    """Where the adapter is, what the eval loss on held-out critical steps did, and the data counts."""

    out_dir: Path
    steps: int
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss: float | None
    train_tokens_per_s: float | None
    stats: dict[str, Any] = field(default_factory=dict)
    attention: str = ""  # the attention implementation that ran
    compute_dtype: str = ""
    processes: int = 1

    @property
    def adapter_dir(self) -> Path:
        return self.out_dir

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": portable_path(self.out_dir),
            "steps": self.steps,
            "eval_loss_before": self.eval_loss_before,
            "eval_loss_after": self.eval_loss_after,
            "train_loss": self.train_loss,
            "train_tokens_per_s": self.train_tokens_per_s,
            "attention": self.attention,
            "compute_dtype": self.compute_dtype,
            "processes": self.processes,
            "stats": self.stats,
        }


def make_accelerator(config: TuneConfig) -> tuple[Any, Any]:
    """(accelerator, compute dtype) for a run of `config`: mixed precision in the compute dtype."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    on_cuda = torch.cuda.is_available()
    dtype = compute_dtype(config, "cuda" if on_cuda else "cpu")
    # AcceleratorState is a process-wide singleton that fixes mixed precision at first use; every
    # tune() call sets its own, as transformers' TrainingArguments does (the process group stays).
    AcceleratorState._reset_state()
    # The scheduler steps once per optimizer step (accelerate's default steps it once per process).
    accelerator = Accelerator(cpu=not on_cuda, mixed_precision=mixed_precision(dtype), step_scheduler_with_optimizer=False)
    return accelerator, dtype


def tune(
    source: str | Path | Sequence[Trajectory],
    config: TuneConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    eval_source: str | Path | Sequence[Trajectory] | None = None,
    force_resume: bool = False,
) -> TuneResult:
    """Finetune `config.model` on the selected steps of `source` (a selection file or trajectories).

    The eval loss is measured on `eval_source`'s selected steps when given (e.g. held-out
    trajectories with the teacher's critical steps), else on a stable hash split of `source`.
    A checkpoint in `out_dir` from a run with another config or data is refused unless `force_resume`.
    """
    import torch
    from accelerate import DistributedType
    from tqdm.auto import tqdm

    out = Path(out_dir)
    accelerator, dtype = make_accelerator(config)
    # never write into a directory of someone else's files; every process checks (read only), so a
    # refusal stops them all instead of leaving the others waiting at their first synchronisation
    check_replaceable_dir(out, "tune")
    if accelerator.is_main_process:
        claim_output_dir(out, "tune")
    device = accelerator.device
    show = progress and accelerator.is_main_process
    torch.manual_seed(config.seed)

    # --- data -------------------------------------------------------------------------------
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    template = load_chat_template(config.chat_template) if config.chat_template else None
    if template:
        tokenizer.chat_template = template
    if eval_source is None:
        train_t, eval_t = split(load_selection(source), config.eval_fraction, config.seed, config.eval_max)
    else:
        train_t, eval_t = load_selection(source), load_selection(eval_source)
    _stage(show, f"rendering {len(train_t)} training and {len(eval_t)} held-out trajectories")
    train_w, train_stats = build_windows(train_t, tokenizer, template, config.max_seq_len, config.keep_prompt)
    eval_w, eval_stats = build_windows(eval_t, tokenizer, template, config.max_seq_len, config.keep_prompt)
    if not train_w:
        raise InputError("no selected step to train on", source if isinstance(source, (str, Path)) else None)
    if train_stats.truncated_steps + eval_stats.truncated_steps:
        log.warning("%d selected steps were longer than max_seq_len and were truncated", train_stats.truncated_steps + eval_stats.truncated_steps)
    groups = pack(train_w, config.batch_tokens)
    per_step = config.grad_accum * accelerator.num_processes
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * len(groups) / per_step))
    stats = {"train": train_stats.to_dict(), "eval": eval_stats.to_dict(), "micro_batches_per_epoch": len(groups),
             "optimizer_steps": total_steps, "eval_ids": [t.id for t in eval_t]}
    run = checkpoint.fingerprint(config, checkpoint.data_hash(train_w, eval_w), accelerator.num_processes)
    saved = checkpoint.read_state(out / CHECKPOINT_DIR) if resume else None
    if saved:
        checkpoint.check_resume(out / CHECKPOINT_DIR, saved, run, force_resume)  # before the slow model load

    # --- model ------------------------------------------------------------------------------
    attention = choose_attention(config.attn_implementation, device.type)
    _stage(show, f"loading {config.model} ({config.mode}, {str(dtype).removeprefix('torch.')} compute, "
                 f"attention {attention.implementation}: {attention.reason})")
    loading = time.perf_counter()
    model = load_model(config, device, attention)
    attention_ran = attention_used(model)
    if accelerator.is_main_process:  # in the run log even with progress off
        log.info("model loaded in %.1f s; attention: %s", time.perf_counter() - loading, attention_ran)
    if accelerator.distributed_type == DistributedType.FSDP:
        prepare_fsdp(model, accelerator)
    # The model is wrapped (DDP, FSDP's flat shards) before the optimizer takes its parameters.
    model = accelerator.prepare(model)
    optimizer = make_optimizer(model, config, device.type == "cuda")
    scheduler = make_scheduler(optimizer, total_steps, config.warmup_ratio)
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    checkpoint.register_hooks(accelerator)

    start = 0
    if saved:
        checkpoint.load(out / CHECKPOINT_DIR, accelerator)
        start = saved["step"]
        log.info("resuming from step %d of %d", start, total_steps)
    eval_before = saved["eval_loss_before"] if saved else evaluate_loss(model, eval_w, config.batch_tokens, device,
                                                                        progress=show, desc="eval before")
    history = _read_log(out / LOG_FILE, start) if saved else []

    def save(step: int) -> None:
        if accelerator.is_main_process:  # first: a resume keeps the records up to its checkpoint's step
            write_jsonl(out / LOG_FILE, history)
        checkpoint.save(out / CHECKPOINT_DIR, accelerator, {"step": step, "eval_loss_before": eval_before, **run})

    # --- loop -------------------------------------------------------------------------------
    writer = _tensorboard(out / "runs") if accelerator.is_main_process else None
    if writer and eval_before is not None and not saved:
        writer.add_scalar("eval/loss", eval_before, 0)
    bar = tqdm(total=total_steps, initial=start, desc="tune", disable=not show)
    train_loss = None
    tokens_seen, started = 0, time.perf_counter()
    model.train()
    for step in range(start, total_steps):
        micro = [collate(groups[g]).to(device) for g in _micro_batches(step, len(groups), config, accelerator)]
        # Normalise by the supervised tokens of the whole step on every process. DDP averages the
        # processes' gradients, hence the factor num_processes: the update is the mean over tokens.
        counts = torch.tensor([float(sum(b.n_supervised for b in micro)), float(sum(b.n_tokens for b in micro))], device=device)
        n_step, step_tokens = (int(x) for x in _sum_over_processes(accelerator, counts))
        scale = accelerator.num_processes / max(1, n_step)
        loss_sum = torch.zeros((), device=device)
        for k, batch in enumerate(micro):
            sync = k == len(micro) - 1
            with nullcontext() if sync or accelerator.num_processes == 1 else accelerator.no_sync(model):
                batch_loss, _ = supervised_loss(model, batch)
                accelerator.backward(batch_loss * scale)
            loss_sum += batch_loss.detach().float()
        tokens_seen += step_tokens
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = float(_sum_over_processes(accelerator, loss_sum)) / max(1, n_step)
        lr = scheduler.get_last_lr()[0]
        history.append({"step": step + 1, "loss": train_loss, "lr": lr, "supervised_tokens": n_step,
                        "tokens": step_tokens, "seconds": time.perf_counter() - started})
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}")
        if writer and (step + 1) % max(1, config.log_every) == 0:
            writer.add_scalar("train/loss", train_loss, step + 1)
            writer.add_scalar("train/lr", lr, step + 1)
            writer.add_scalar("train/tokens_per_s", tokens_seen / (time.perf_counter() - started), step + 1)
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
            loss = evaluate_loss(model, eval_w, config.batch_tokens, device)
            if writer and loss is not None:
                writer.add_scalar("eval/loss", loss, step + 1)
            model.train()
        if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < total_steps:
            save(step + 1)
    bar.close()
    elapsed = time.perf_counter() - started

    eval_after = evaluate_loss(model, eval_w, config.batch_tokens, device, progress=show, desc="eval after")
    if writer:
        if eval_after is not None:
            writer.add_scalar("eval/loss", eval_after, total_steps)
        writer.close()
    save(total_steps)
    result = TuneResult(out, total_steps, eval_before, eval_after, train_loss,
                        tokens_seen / elapsed if tokens_seen else None, stats,
                        attention_ran, str(dtype).removeprefix("torch."), accelerator.num_processes)
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        _save_outputs(out, accelerator.unwrap_model(model), weights, tokenizer, config, result)
    accelerator.wait_for_everyone()
    return result


def _stage(show: bool, message: str) -> None:
    """A progress line for the slow stages before the step bar (model load, rendering)."""
    if show:
        log.info(message)


def _sum_over_processes(accelerator: Any, value: Any) -> Any:
    return accelerator.reduce(value, "sum") if accelerator.num_processes > 1 else value


def _read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    """The per-step records of the run being resumed, up to its checkpoint's step."""
    import json

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [r for r in map(json.loads, filter(None, lines)) if r.get("step", 0) <= upto]


def _micro_batches(step: int, n_groups: int, config: TuneConfig, accelerator: Any) -> list[int]:
    """This process's micro-batch indices for optimizer step `step`: a seeded shuffle per epoch."""
    import torch

    per_step = config.grad_accum * accelerator.num_processes
    first = step * per_step + accelerator.process_index * config.grad_accum
    out = []
    for g in range(first, first + config.grad_accum):
        epoch, index = divmod(g, n_groups)
        order = torch.randperm(n_groups, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        out.append(int(order[index]))
    return out


def evaluate_loss(model: Any, windows: Sequence[Window], batch_tokens: int, device: Any, progress: bool = False,
                  desc: str = "eval") -> float | None:
    """Mean token cross-entropy over the supervised (critical-step) tokens of `windows`; None if none."""
    import torch
    from tqdm.auto import tqdm

    if not windows:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for group in tqdm(pack(windows, batch_tokens), desc=desc, disable=not progress, leave=False):
            loss_sum, n = supervised_loss(model, collate(group).to(device))
            total += float(loss_sum)
            count += n
    if was_training:
        model.train()
    return total / count if count else None


def dump_supervised(source: str | Path | Sequence[Trajectory], config: TuneConfig, path: str | Path) -> int:
    """Write per trajectory the decoded text of every supervised span (JSONL); returns the count."""
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    template = load_chat_template(config.chat_template) if config.chat_template else None
    rendered = render_all(load_selection(source), tokenizer, template)
    write_jsonl(path, ({"id": r.id, "spans": supervised_texts(r, tokenizer)} for r in rendered))
    return len(rendered)


def _tensorboard(path: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def _name_builtin_base(out: Path, model: str) -> None:
    """PEFT records where the base model was loaded from: for a built-in, critstep's cache on this
    machine. Record the built-in's name instead, which `critstep merge` resolves on any machine."""
    if model not in CAUSAL_LMS:
        return
    local = str(causal_lm_path(model))
    for name in ("adapter_config.json", "README.md"):
        path = out / name
        if path.exists():
            text = path.read_text(encoding="utf-8")
            with atomic_write(path) as f:
                f.write(text.replace(local, model))


def _save_outputs(out: Path, model: Any, state: dict[str, Any], tokenizer: Any, config: TuneConfig, result: TuneResult) -> None:
    """The PEFT adapter (or full model), tokenizer, resolved config, data stats and the result."""
    model.save_pretrained(out, state_dict=state)
    _name_builtin_base(out, config.model)
    tokenizer.save_pretrained(out)
    with atomic_write(out / CONFIG_FILE) as f:
        f.write(config.to_yaml())
    write_json(out / STATS_FILE, result.stats)
    write_json(out / RESULT_FILE, result.to_dict())
