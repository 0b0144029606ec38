"""`critstep tune`: finetune a model with the loss on the selected steps only."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from critstep.commands._options import input_argument

# Flags that override the config key of the same name (None = not given: the config file decides).
_OVERRIDES = ("mode", "max_steps", "max_seq_len", "epochs", "lr", "grad_accum", "pack_tokens", "lora_r", "lora_alpha",
              "eval_fraction", "seed", "chat_template")


@click.command("tune")
@input_argument("selected")
@click.option("--model", default=None, help="Base model: a built-in name (smollm2-135m), a HF id or a local directory.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Directory for the adapter, logs and checkpoint.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML config: a file here, else one of critstep's configs (configs/tune-*.yaml).")
@click.option("--mode", type=click.Choice(["qlora", "lora", "full"]), default=None, help="qlora (4-bit NF4 base), lora, or full finetuning.")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides epochs).")
@click.option("--max-seq-len", type=int, default=None, help="Longest training window in tokens.")
@click.option("--epochs", type=float, default=None)
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step.")
@click.option("--pack-tokens", type=int, default=None, help="Tokens per packed micro-batch (default: max-seq-len).")
@click.option("--lora-r", type=int, default=None)
@click.option("--lora-alpha", type=int, default=None)
@click.option("--eval-fraction", type=float, default=None, help="Share of trajectories held out for the eval loss.")
@click.option("--seed", type=int, default=None)
@click.option("--chat-template", type=click.Path(exists=True, dir_okay=False), default=None, help="Jinja chat template replacing the tokenizer's.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable), e.g. --set lora_dropout=0.1.")
@click.option("--dump-supervised", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the decoded text of every supervised span to this JSONL file and exit without training.")
@click.option("--eval", "eval_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Selection file to measure the eval loss on (e.g. held-out trajectories with teacher labels) instead of a split of SELECTED.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if OUT holds a checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(
    selected: str,
    model: str | None,
    out_dir: Path | None,
    config_path: Path | None,
    sets: tuple[str, ...],
    dump_supervised: Path | None,
    eval_path: Path | None,
    no_resume: bool,
    quiet: bool,
    **flags: object,
) -> None:
    """Finetune MODEL on the selected steps of SELECTED (a `critstep select` output: a file, or a
    directory or quoted glob of its shards).

    The whole trajectory stays in the context; the loss is computed on the selected steps only.
    Writes a PEFT adapter, the tokenizer, the resolved config and data statistics to OUT, and
    prints the eval loss on the held-out trajectories' selected steps before and after.

    \b
    critstep tune selected.jsonl --model smollm2-135m --out runs/smol --config configs/tune-smollm2-135m-cpu.yaml
    critstep tune selected.jsonl --model smollm2-135m --dump-supervised spans.jsonl
    """
    from critstep.errors import ConfigError
    from critstep.io import check_outputs_apart
    from critstep.streams import expand_source
    from critstep.tuner import TuneConfig, tune
    from critstep.tuner import dump_supervised as dump
    from critstep.tuner.config import parse_override

    overrides = {key: flags[key] for key in _OVERRIDES}
    overrides.update(dict(parse_override(s) for s in sets))
    if model is not None:
        overrides["model"] = model
    config = TuneConfig.from_yaml(config_path, overrides)
    if dump_supervised is not None:
        check_outputs_apart({"SELECTED": expand_source(selected), "--config": config_path, "--eval": eval_path}, {"--dump-supervised": dump_supervised})
        n = dump(selected, config, dump_supervised)
        click.echo(f"wrote the supervised spans of {n} trajectories to {dump_supervised}")
        return
    if out_dir is None:
        raise ConfigError("--out DIR is required for training")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("critstep").setLevel(logging.INFO)  # e.g. "resuming from step N"
    result = tune(selected, config, out_dir, resume=not no_resume, progress=not quiet, eval_source=eval_path)
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch / torchrun only the main process reports
        return
    train = result.stats["train"]
    click.echo(
        f"trained {result.steps} steps on {train['trajectories']} trajectories "
        f"({train['selected_steps']} selected steps, {train['supervised_tokens']:,} supervised of {train['window_tokens']:,} tokens; "
        f"{train['windows']} windows, {train['context_tokens_cut']:,} context tokens cut, {train['truncated_steps']} steps truncated)"
    )
    click.echo(f"eval loss on held-out selected steps: {_fmt(result.eval_loss_before)} -> {_fmt(result.eval_loss_after)}")
    click.echo(f"adapter: {result.adapter_dir}")


def _fmt(loss: float | None) -> str:
    return "n/a (no held-out trajectories)" if loss is None else f"{loss:.4f}"
