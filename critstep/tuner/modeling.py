"""Load the model to tune in one of three modes, composing transformers, bitsandbytes and peft.

Precision follows mixed-precision training (accelerate's `mixed_precision`, torch autocast):
- qlora: the base quantized to 4-bit NF4 with double quantization; what is not quantized (embeddings,
  norms, LM head) stays in the compute dtype and frozen; LoRA adapters on top;
- lora: the base in the compute dtype, frozen, with LoRA adapters;
- full: every weight trained, held in fp32 (the master copy AdamW updates);
in every mode the trainable weights are fp32 and the forward and backward run under autocast in the
compute dtype, so matmuls, attention and the LM head compute in bf16 on a GPU.

peft's `prepare_model_for_kbit_training` is not used: it upcasts every non-quantized weight to fp32,
which puts the residual stream, attention (no flash kernel) and the LM head in fp32. TRL's SFTTrainer
skips it too; critstep keeps the rest of what it does (frozen base, checkpointing, input gradients).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

from critstep.errors import ConfigError, ModelError
from critstep.models import causal_lm_path
from critstep.tuner.config import TuneConfig

log = logging.getLogger(__name__)

# fp32 compute where bf16 is not faster: on the AVX512-BF16 CPU this was measured on (no AMX), QLoRA
# of SmolLM2-135M ran at 0.89x the fp32 speed in bf16 (0.71-1.35 over 3 rounds, loaded machine), with
# 1.09 instead of 2.40 GiB peak RSS (benchmarks/tuner_speed.py --variants critstep:bfloat16,critstep:float32;
# benchmarks/results/tuner_speed-dtypes.json). `--set compute_dtype=bfloat16` trades the speed for the memory.
_CPU_BF16_FASTER = False


def compute_dtype(config: TuneConfig, device_type: str | None = None) -> Any:
    """The dtype matmuls and attention run in: bf16 on a GPU that has it, the configured one if set."""
    import torch

    if config.compute_dtype != "auto":
        return getattr(torch, config.compute_dtype)
    return auto_dtype(device_type or ("cuda" if torch.cuda.is_available() else "cpu"))


def auto_dtype(device_type: str) -> Any:
    """What "auto" means on a device: bf16 on a GPU that has it (else fp16), fp32 on CPU (see above).
    The tuner and `critstep eval` share it, so a model is evaluated in the dtype it was tuned in."""
    import torch

    if device_type.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _CPU_BF16_FASTER else torch.float32


def mixed_precision(dtype: Any) -> str:
    """accelerate's `mixed_precision` for a compute dtype."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


@dataclass
class AttentionChoice:
    """The attention implementation to load with, and why (for the run log)."""

    implementation: str
    reason: str


def choose_attention(requested: str, device_type: str, installed: set[str] | None = None) -> AttentionChoice:
    """`auto`: on CUDA the varlen flash path when a flash-attention build is installed, else sdpa.

    Packed rows carry no attention mask, only position ids that restart per window: flash-attention
    turns them into varlen kernels (cu_seqlens), while sdpa needs a 4-D block-diagonal mask and
    falls back to its generic kernel. `installed` (for tests) names the importable packages.
    """
    if requested != "auto":
        return AttentionChoice(requested, "set in the config")
    if device_type != "cuda":
        return AttentionChoice("sdpa", f"no flash-attention kernel on {device_type}")
    found = installed if installed is not None else {
        name for name in ("flash_attn_interface", "flash_attn", "kernels") if importlib.util.find_spec(name) is not None
    }
    if "flash_attn_interface" in found:
        return AttentionChoice("flash_attention_3", "flash-attn 3 is installed (varlen kernels for packed rows)")
    if "flash_attn" in found:
        return AttentionChoice("flash_attention_2", "flash-attn is installed (varlen kernels for packed rows)")
    if "kernels" in found:
        return AttentionChoice("kernels-community/flash-attn2", "the kernels hub's flash-attn2 (varlen kernels for packed rows)")
    return AttentionChoice("sdpa", "no flash-attention installed (pip install flash-attn, or kernels): packed rows use a 4-D mask")


def _under_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def load_model(config: TuneConfig, device: Any, attention: AttentionChoice | None = None) -> Any:
    """The trainable model on `device`: a PEFT model (qlora, lora) or the plain model (full).

    With `attn_implementation: auto`, a flash path that fails to load falls back to sdpa with a warning.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(config, device.type)
    attention = attention or choose_attention(config.attn_implementation, device.type)
    # full finetuning keeps fp32 weights: they are the master copy the optimizer updates
    kwargs: dict[str, Any] = {"dtype": torch.float32 if config.mode == "full" else dtype}
    if config.mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=dtype,
            # FSDP shards tensors of one dtype: there the packed 4-bit weights are stored as the compute dtype.
            bnb_4bit_quant_storage=dtype if _under_fsdp() else torch.uint8,
        )
        if not _under_fsdp():  # FSDP places (and shards) the weights itself; rank 0 loads them on the CPU
            kwargs["device_map"] = {"": device}
    path = causal_lm_path(config.model)

    def load(implementation: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=config.trust_remote_code, attn_implementation=implementation, **kwargs
        )

    try:
        try:
            model = load(attention.implementation)
        except (ImportError, ValueError, RuntimeError) as e:
            if config.attn_implementation != "auto" or attention.implementation == "sdpa":
                raise
            log.warning("attention %s failed to load (%s); using sdpa", attention.implementation, str(e).splitlines()[0])
            model = load("sdpa")
    except OSError as e:
        raise ModelError(f"cannot load causal LM {config.model!r} from {path}: {e}") from None
    except (ImportError, ValueError) as e:
        raise ModelError(f"cannot load causal LM {config.model!r} with attn_implementation={attention.implementation!r}: "
                         f"{str(e).splitlines()[0]}") from None
    if config.mode != "qlora" and not _under_fsdp():
        model.to(device)
    model.config.use_cache = False
    if config.mode == "full":
        if config.gradient_checkpointing:
            _checkpointing(model)
        return model
    return _add_lora(model, config)


def attention_used(model: Any) -> str:
    """The attention implementation the loaded model runs (what the run log reports)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or getattr(config, "attn_implementation", "unknown"))


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
    from peft import LoraConfig, get_peft_model

    if config.mode == "qlora":
        _keep_cpu_4bit_differentiable(model)
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
        # peft keeps the adapter weights in fp32 (autocast_adapter_dtype): the master copy AdamW updates
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"cannot add LoRA adapters (target_modules={config.target_modules!r}): {e}") from None


def prepare_fsdp(model: Any, accelerator: Any) -> None:
    """FSDP with LoRA/QLoRA as peft documents it (what transformers' Trainer does before wrapping):
    trainable LoRA layers wrapped apart from the frozen base, so `use_orig_params: false` flattens
    parameters of one dtype and one requires_grad each; with QLoRA, FSDP's mixed precision in the
    4-bit weights' storage dtype."""
    from peft.utils.other import fsdp_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    if hasattr(model, "peft_config"):
        plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    quantization = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    storage = getattr(quantization, "bnb_4bit_quant_storage", None)
    if storage is not None and storage.is_floating_point:
        plugin.set_mixed_precision(storage, override=True)


def make_optimizer(model: Any, config: TuneConfig, on_cuda: bool) -> Any:
    """Paged 8-bit AdamW on one CUDA device or DDP (its paging needs unified memory), plain AdamW
    elsewhere and under FSDP (peft: paged 8-bit AdamW fails to save an FSDP-QLoRA checkpoint)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    name = config.optimizer
    if name == "auto":
        name = "paged_adamw_8bit" if on_cuda and not _under_fsdp() else "adamw"
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
