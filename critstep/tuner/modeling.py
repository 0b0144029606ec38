"""Load the model to tune in one of three modes, composing transformers, bitsandbytes and peft.

- qlora: the base quantized to 4-bit NF4 with double quantization, computing in bf16 (fp32 where
  bf16 is unsupported), prepared for k-bit training, with LoRA adapters on top;
- lora: the base in the compute dtype, frozen, with LoRA adapters;
- full: every weight trained (for comparison; needs far more memory).
"""

from __future__ import annotations

import os
from typing import Any

from critstep.errors import ConfigError, ModelError
from critstep.models import causal_lm_path
from critstep.tuner.config import TuneConfig


def compute_dtype(config: TuneConfig) -> Any:
    import torch

    if config.compute_dtype != "auto":
        return getattr(torch, config.compute_dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # CPUs with AVX512-BF16 (or AMX) run bf16 matmuls natively, about twice as fast as fp32 here.
    return torch.bfloat16 if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() else torch.float32


def _under_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def load_model(config: TuneConfig, device: Any) -> Any:
    """The trainable model on `device`: a PEFT model (qlora, lora) or the plain model (full)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(config)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": config.attn_implementation}
    if config.mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=dtype,
            # FSDP shards tensors of one dtype: there the packed 4-bit weights are stored as the compute dtype.
            bnb_4bit_quant_storage=dtype if _under_fsdp() else torch.uint8,
        )
        kwargs["device_map"] = {"": device}
    path = causal_lm_path(config.model)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=config.trust_remote_code, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load causal LM {config.model!r} from {path}: {e}") from None
    if config.mode != "qlora":
        model.to(device)
    model.config.use_cache = False
    if config.mode == "full":
        if config.gradient_checkpointing:
            _checkpointing(model)
        return model
    return _add_lora(model, config)


def _checkpointing(model: Any) -> None:
    # transformers 5 renamed gradient checkpointing to activation checkpointing; 4.x has only the old name.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _keep_cpu_4bit_differentiable(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference when we evaluate mid-training.

    On AVX512-BF16 CPUs, a Linear4bit forward in eval mode without grad converts its weight for good
    to a layout served by a kernel that has no backward: training after an eval would then silently
    lose the gradient through the frozen base.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _add_lora(model: Any, config: TuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.mode == "qlora":
        _keep_cpu_4bit_differentiable(model)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if config.gradient_checkpointing:
            _checkpointing(model)
            model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"cannot add LoRA adapters (target_modules={config.target_modules!r}): {e}") from None


def make_optimizer(model: Any, config: TuneConfig, on_cuda: bool) -> Any:
    """Paged 8-bit AdamW on CUDA (its paging needs unified memory), plain AdamW elsewhere."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    name = config.optimizer
    if name == "auto":
        name = "paged_adamw_8bit" if on_cuda else "adamw"
    if name == "paged_adamw_8bit":
        if not on_cuda:
            raise ConfigError("optimizer paged_adamw_8bit needs CUDA; use adamw on this machine")
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: Any, total_steps: int, warmup_ratio: float) -> Any:
    """Linear warm-up, then cosine decay to 10% of the peak rate."""
    import math

    import torch

    warmup = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
