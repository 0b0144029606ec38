"""The real SmolLM2-135M: QLoRA on CPU over seed-labelled corpus trajectories, adapter reload + generate (slow)."""

from __future__ import annotations

import pytest
import torch

from critstep.formats import read_trajectories, write_trajectories
from critstep.labels import read_labels
from critstep.tuner import TuneConfig, tune


@pytest.mark.slow
def test_smollm2_qlora_lowers_held_out_loss_and_the_adapter_generates(shared, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from critstep.models import causal_lm_path

    corpus = read_trajectories(shared / "corpus.jsonl")
    labels = read_labels(shared / "seed_labels.jsonl", corpus)
    by_id = {t.id: t for t in corpus}
    short = [i for i in labels if by_id[i].env in ("alfworld", "qa-search")][:16]
    selection = tmp_path / "selected.jsonl"
    write_trajectories(selection, [by_id[i] for i in short], {i: labels[i].to_selection() for i in short})

    config = TuneConfig(model="smollm2-135m", max_seq_len=512, max_steps=6, lr=1e-3, eval_fraction=0.25, save_every=0)
    result = tune(selection, config, tmp_path / "run", progress=False)
    assert result.eval_loss_after < result.eval_loss_before

    base = AutoModelForCausalLM.from_pretrained(causal_lm_path("smollm2-135m"))
    model = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    task = by_id[short[0]]
    prompt = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in task.messages[:2]],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()
