"""Fold a LoRA adapter into its base model's weights, for serving without peft.

The base is reloaded unquantized (merging into 4-bit weights would round the update away) in its
stored dtype, the adapter applied and merged, and the result written atomically with the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from critstep.errors import InputError, ModelError
from critstep.io import atomic_dir, check_replaceable_dir
from critstep.models import causal_lm_path
from critstep.tuner.train import CONFIG_FILE


def base_model_ref(adapter_dir: Path) -> str:
    """The base model: the tune run's `model` (a built-in name resolves offline), else peft's record."""
    config_file = adapter_dir / CONFIG_FILE
    if config_file.exists():
        model = (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}).get("model")
        if model:
            return str(model)
    try:
        return str(json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        raise InputError("not a PEFT adapter directory (no usable adapter_config.json)", adapter_dir) from None


def apply_adapter(model: Any, adapter: Path, merge: bool) -> Any:
    """`model` with the PEFT adapter at `adapter` on top, folded into its weights if `merge`."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").exists():
        raise InputError("not a PEFT adapter directory (no adapter_config.json); a merged model is passed as --model", adapter)
    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot apply adapter {adapter} to the base model: {e}") from None
    return model.merge_and_unload() if merge else model


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    """Write base + adapter merged into `out_dir` (safetensors, config, tokenizer); returns it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").exists():
        raise InputError("not a PEFT adapter directory (no adapter_config.json)", adapter)
    check_replaceable_dir(out_dir, "model")
    ref = base_model or base_model_ref(adapter)
    path = causal_lm_path(ref)
    try:
        base = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    except OSError as e:
        raise ModelError(f"cannot load base model {ref!r} from {path}: {e}") from None
    merged = apply_adapter(base, adapter, merge=True)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    out = Path(out_dir)
    with atomic_dir(out, "model") as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
