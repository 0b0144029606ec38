"""`TuneConfig`: every knob of a tuning run, read from YAML and overridden from the command line.

One flat dataclass so a run's resolved configuration can be written next to its adapter and read
back unchanged (`TuneConfig.from_yaml(out / "critstep_tune.yaml")`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from critstep.configs import resolve_config
from critstep.errors import ConfigError

MODES = ("qlora", "lora", "full")


@dataclass
class TuneConfig:
    """A tuning run. Defaults suit SmolLM2-135M on a CPU; the YAML files in configs/ scale them up."""

    model: str = "smollm2-135m"
    mode: str = "qlora"  # qlora (4-bit NF4 base + LoRA), lora (full-precision base + LoRA) or full
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's template
    max_seq_len: int = 1024
    pack_tokens: int = 0  # tokens per packed micro-batch; 0 = max_seq_len
    keep_prompt: bool = True  # a window of a long trajectory keeps the system prompt + task at its head
    eval_fraction: float = 0.1
    eval_max: int = 64  # at most this many held-out trajectories
    seed: int = 0
    epochs: float = 1.0
    max_steps: int = 0  # optimizer steps; 0 = as many as `epochs` gives
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    optimizer: str = "auto"  # auto: paged 8-bit AdamW on CUDA, AdamW elsewhere; or adamw / paged_adamw_8bit
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"  # peft's all-linear leaves the LM head out
    compute_dtype: str = "auto"  # auto: bfloat16 where the GPU (or the CPU: AVX512-BF16) supports it, else float32
    double_quant: bool = True
    gradient_checkpointing: bool = True
    attn_implementation: str = "sdpa"
    eval_every: int = 0  # optimizer steps between eval-loss measurements; 0 = only before and after
    save_every: int = 50  # optimizer steps between resumable checkpoints
    log_every: int = 1
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.max_seq_len < 16:
            raise ConfigError(f"max_seq_len must be at least 16, got {self.max_seq_len}")
        if self.pack_tokens and self.pack_tokens < self.max_seq_len:
            raise ConfigError(f"pack_tokens ({self.pack_tokens}) must be 0 or at least max_seq_len ({self.max_seq_len})")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be at least 1, got {self.grad_accum}")
        if self.optimizer not in ("auto", "adamw", "paged_adamw_8bit"):
            raise ConfigError(f"optimizer must be auto, adamw or paged_adamw_8bit, got {self.optimizer!r}")
        if self.compute_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"compute_dtype must be auto, bfloat16, float16 or float32, got {self.compute_dtype!r}")

    @property
    def batch_tokens(self) -> int:
        return self.pack_tokens or self.max_seq_len

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<config>") -> TuneConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        coerced = {k: _coerce(k, v, known[k], source) for k, v in values.items()}
        return cls(**coerced)

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> TuneConfig:
        """The YAML file's values (if any), then `overrides` (None values ignored) on top."""
        values: dict[str, Any] = {}
        if path is not None:
            path = resolve_config(path)  # here, else among critstep's shipped configs
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"{path}: no such config file") from None
            except OSError as e:
                raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: invalid YAML: {e}") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
            values.update(loaded or {})
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(values, str(path or "<overrides>"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from `--set`, the value read as YAML (so numbers, booleans and lists work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(raw)


def _coerce(name: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    """YAML reads `2e-4` as a string and ints where floats are meant: settle types by the field's default."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if value is None or default is None or isinstance(default, (list, dict)) or name == "target_modules":
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} must be a {type(default).__name__}, got {value!r}") from None
    return value
