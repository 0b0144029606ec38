"""The tuning recipe: data -> model -> loop -> adapter, readable top to bottom (torchtune-style).

Resumable: a checkpoint (trainable weights, optimizer, scheduler, RNG, step) is written atomically
every `save_every` steps and at the end; `tune` continues from it when one exists in `out_dir`.
The micro-batch order is a pure function of (seed, step), so a resumed run sees exactly the data
the interrupted one would have seen. Under `accelerate launch` every process takes its own share of
each step's micro-batches and only the main process writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critstep.errors import InputError
from critstep.io import atomic_write, claim_output_dir, portable_path, write_json, write_jsonl
from critstep.models import CAUSAL_LMS, causal_lm_path, load_tokenizer
from critstep.trajectory import Trajectory
from critstep.tuner.config import TuneConfig
from critstep.tuner.data import build_windows, load_selection, render_all, split, supervised_texts
from critstep.tuner.loss import supervised_loss
from critstep.tuner.modeling import load_model, make_optimizer, make_scheduler
from critstep.tuner.packing import collate, pack
from critstep.tuner.render import load_chat_template
from critstep.tuner.windows import Window

log = logging.getLogger(__name__)

CONFIG_FILE = "critstep_tune.yaml"
STATS_FILE = "data_stats.json"
RESULT_FILE = "tune_result.json"
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
            "stats": self.stats,
        }


def tune(
    source: str | Path | Sequence[Trajectory],
    config: TuneConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    eval_source: str | Path | Sequence[Trajectory] | None = None,
) -> TuneResult:
    """Finetune `config.model` on the selected steps of `source` (a selection file or trajectories).

    The eval loss is measured on `eval_source`'s selected steps when given (e.g. held-out
    trajectories with the teacher's critical steps), else on a stable hash split of `source`.
    """
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    out = Path(out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.is_main_process:
        claim_output_dir(out, "tune")  # never write into a directory of someone else's files
    device = accelerator.device
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

    # --- model ------------------------------------------------------------------------------
    model = load_model(config, device)
    optimizer = make_optimizer(model, config, device.type == "cuda")
    scheduler = make_scheduler(optimizer, total_steps, config.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)

    state = _load_checkpoint(out / CHECKPOINT_DIR, accelerator.unwrap_model(model), optimizer, scheduler) if resume else None
    start = state["step"] if state else 0
    if state:
        log.info("resuming from step %d of %d", start, total_steps)
    eval_before = state["eval_loss_before"] if state else evaluate_loss(model, eval_w, config.batch_tokens, device)

    # --- loop -------------------------------------------------------------------------------
    writer = _tensorboard(out / "runs") if accelerator.is_main_process else None
    if writer and eval_before is not None and not state:
        writer.add_scalar("eval/loss", eval_before, 0)
    bar = tqdm(total=total_steps, initial=start, desc="tune", disable=not (progress and accelerator.is_main_process))
    train_loss = None
    tokens_seen, started = 0, time.perf_counter()
    model.train()
    for step in range(start, total_steps):
        micro = [collate(groups[g]).to(device) for g in _micro_batches(step, len(groups), config, accelerator)]
        norm = sum(b.n_supervised for b in micro)
        step_loss = 0.0
        for k, batch in enumerate(micro):
            sync = k == len(micro) - 1
            with nullcontext() if sync or accelerator.num_processes == 1 else accelerator.no_sync(model):
                loss_sum, _ = supervised_loss(model, batch)
                accelerator.backward(loss_sum / norm)
            step_loss += float(loss_sum.detach())
            tokens_seen += batch.n_tokens
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = step_loss / max(1, norm)
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}")
        if writer and (step + 1) % max(1, config.log_every) == 0:
            writer.add_scalar("train/loss", train_loss, step + 1)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step + 1)
            writer.add_scalar("train/tokens_per_s", tokens_seen / (time.perf_counter() - started), step + 1)
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
            loss = evaluate_loss(model, eval_w, config.batch_tokens, device)
            if writer and loss is not None:
                writer.add_scalar("eval/loss", loss, step + 1)
            model.train()
        if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < total_steps:
            _save_checkpoint(out / CHECKPOINT_DIR, accelerator, model, optimizer, scheduler, step + 1, eval_before)
    bar.close()
    elapsed = time.perf_counter() - started

    eval_after = evaluate_loss(model, eval_w, config.batch_tokens, device)
    if writer:
        if eval_after is not None:
            writer.add_scalar("eval/loss", eval_after, total_steps)
        writer.close()
    _save_checkpoint(out / CHECKPOINT_DIR, accelerator, model, optimizer, scheduler, total_steps, eval_before)
    result = TuneResult(out, total_steps, eval_before, eval_after, train_loss,
                        tokens_seen / elapsed if tokens_seen else None, stats)
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        _save_outputs(out, accelerator.unwrap_model(model), weights, tokenizer, config, result)
    accelerator.wait_for_everyone()
    return result


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


def evaluate_loss(model: Any, windows: Sequence[Window], batch_tokens: int, device: Any) -> float | None:
    """Mean token cross-entropy over the supervised (critical-step) tokens of `windows`; None if none."""
    import torch

    if not windows:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for group in pack(windows, batch_tokens):
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


def _trainable_state(accelerator: Any, model: Any) -> dict[str, Any]:
    """The weights a checkpoint must keep: the adapter (PEFT) or every weight (full); gathered under FSDP."""
    from peft import get_peft_model_state_dict

    state = accelerator.get_state_dict(model)  # every process must call it: FSDP gathers the shards here
    unwrapped = accelerator.unwrap_model(model)
    if hasattr(unwrapped, "peft_config"):
        state = get_peft_model_state_dict(unwrapped, state_dict=state)
    return {k: v.detach().cpu().clone() for k, v in state.items()}  # clone: tied weights must not share storage


def _save_checkpoint(path: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, step: int, eval_before: float | None) -> None:
    """Trainable weights, optimizer, scheduler, RNG and step, swapped into place as a whole."""
    import torch
    from safetensors.torch import save_file

    weights = _trainable_state(accelerator, model)
    optim_state = optimizer.state_dict()
    if not accelerator.is_main_process:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "eval_loss_before": eval_before}))
        old = path.with_name(path.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any] | None:
    """Restore a checkpoint written by `_save_checkpoint` (our own files, read with weights_only)."""
    import torch
    from safetensors.torch import load_file

    if not (path / "state.json").exists():
        return None
    from peft import set_peft_model_state_dict

    weights = load_file(str(path / "trainable.safetensors"))
    if hasattr(model, "peft_config"):
        result = set_peft_model_state_dict(model, weights)
        missing = [k for k in result.missing_keys if "lora_" in k]
    else:
        missing = model.load_state_dict(weights, strict=False).missing_keys
    if missing:
        raise InputError(f"checkpoint does not match the model: {len(missing)} tensors missing, e.g. {missing[0]}", path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


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
