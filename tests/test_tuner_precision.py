"""Mixed precision: matmuls, attention and the LM head compute in bf16; trainable weights stay fp32.

The dtypes are read where the kernels run (a TorchDispatchMode sees each aten op after autocast has
cast its inputs), during a real `tune()` step in each mode.
"""

from __future__ import annotations

import collections

import pytest
import torch
from fixtures.tuner_support import save_tiny_llama, toy_trajectories, write_selection
from torch.utils._python_dispatch import TorchDispatchMode

from critstep.tuner import TuneConfig, modeling, tune
from critstep.tuner import train as train_module

MATMULS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear")


class KernelDtypes(TorchDispatchMode):
    """Counts (op, input dtypes) of every matmul and attention kernel that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: collections.Counter[tuple[str, tuple[str, ...]]] = collections.Counter()
        self.logits_dtypes: set[torch.dtype] = set()
        self.vocab = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in MATMULS or "scaled_dot_product" in name:
            dtypes = tuple(str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
            if "scaled_dot_product" in name:
                dtypes = dtypes[:3]  # q, k, v (backward: grad, q, k); its log-sum-exp statistics are fp32 by design
            self.seen[(name, dtypes)] += 1
            if isinstance(out, torch.Tensor) and out.shape[-1] == self.vocab:
                self.logits_dtypes.add(out.dtype)  # the LM head's product
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    return write_selection(tmp_path_factory.mktemp("data") / "selected.jsonl", toy_trajectories(6))


@pytest.mark.parametrize("mode", ["qlora", "lora", "full"])
def test_bf16_compute_with_fp32_trainable_weights(tiny, selection, tmp_path, monkeypatch, mode):
    from transformers import AutoConfig

    seen_params: list[tuple[str, torch.dtype, bool]] = []
    real_optimizer = train_module.make_optimizer

    def recording_optimizer(model, config, on_cuda):
        seen_params.extend((n, p.dtype, p.requires_grad) for n, p in model.named_parameters())
        return real_optimizer(model, config, on_cuda)

    monkeypatch.setattr(train_module, "make_optimizer", recording_optimizer)
    config = TuneConfig(model=str(tiny), mode=mode, compute_dtype="bfloat16", max_seq_len=256, max_steps=1, eval_fraction=0.2,
                        save_every=0, lr=1e-3, gradient_checkpointing=mode != "full")
    probe = KernelDtypes()
    probe.vocab = AutoConfig.from_pretrained(tiny).vocab_size
    with probe:
        tune(selection, config, tmp_path / mode, progress=False)

    matmuls = {k: n for k, n in probe.seen.items() if k[0] in MATMULS}
    attention = {k: n for k, n in probe.seen.items() if "scaled_dot_product" in k[0]}
    assert matmuls and attention
    not_bf16 = {k: n for k, n in probe.seen.items() if set(k[1]) != {"bfloat16"}}
    assert not not_bf16, f"kernels not computing in bf16: {not_bf16}"
    assert probe.logits_dtypes == {torch.bfloat16}  # the LM head ran, in bf16

    trainable = [(n, d) for n, d, grad in seen_params if grad]
    assert trainable and all(d == torch.float32 for _, d in trainable), "trainable weights must be fp32 (the master copy)"
    if mode == "full":
        assert len(trainable) == len(seen_params)
    else:
        # k-bit preparation must not upcast the frozen, unquantized weights (embeddings, norms, head)
        frozen = {d for n, d, grad in seen_params if not grad and d.is_floating_point}
        assert frozen == {torch.bfloat16}, frozen


def test_compute_dtype_is_bf16_on_a_gpu_that_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert modeling.compute_dtype(TuneConfig(), "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert modeling.compute_dtype(TuneConfig(), "cuda") == torch.float16
    assert modeling.compute_dtype(TuneConfig(compute_dtype="float32"), "cuda") == torch.float32
    assert modeling.mixed_precision(torch.bfloat16) == "bf16" and modeling.mixed_precision(torch.float32) == "no"
