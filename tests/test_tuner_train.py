"""The tuning recipe end to end on a tiny random Llama: QLoRA on CPU, resume, adapter reload, merge, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.tuner_support import save_tiny_llama, toy_trajectories, write_selection

from critstep.errors import ConfigError, InputError
from critstep.formats import write_trajectories
from critstep.tuner import TuneConfig, merge_adapter, tune
from critstep.tuner import train as train_module
from critstep.tuner.config import parse_override


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    return write_selection(tmp_path_factory.mktemp("data") / "selected.jsonl", toy_trajectories(12))


def _config(tiny, **kw) -> TuneConfig:
    values = {"model": str(tiny), "mode": "qlora", "max_seq_len": 256, "lr": 1e-2, "eval_fraction": 0.25, "max_steps": 4,
              "compute_dtype": "float32", "save_every": 2}
    values.update(kw)
    return TuneConfig(**values)


def _adapter_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def test_qlora_lowers_eval_loss_and_saves_a_peft_adapter_that_generates(tiny, selection, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    result = tune(selection, _config(tiny, max_steps=6), out, progress=False)
    assert result.steps == 6
    assert result.eval_loss_after < result.eval_loss_before
    assert result.stats["train"]["trajectories"] + result.stats["eval"]["trajectories"] == 12
    assert result.stats["eval"]["trajectories"] > 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "critstep_tune.yaml", "data_stats.json"):
        assert (out / name).exists(), name
    assert TuneConfig.from_yaml(out / "critstep_tune.yaml") == _config(tiny, max_steps=6)
    assert list((out / "runs").iterdir()), "no TensorBoard log"
    # The quantized layers were really 4-bit, and LoRA sits on every linear layer but the LM head.
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    base = AutoModelForCausalLM.from_pretrained(tiny)
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Task: put the mug in the sink."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


def test_resume_continues_from_the_saved_step(tiny, selection, tmp_path, monkeypatch):
    straight = tune(selection, _config(tiny, lora_dropout=0.1), tmp_path / "straight", progress=False)

    class Interrupted(Exception):
        pass

    real_save = train_module._save_checkpoint

    def save_then_die(path, accelerator, model, optimizer, scheduler, step, eval_before):
        real_save(path, accelerator, model, optimizer, scheduler, step, eval_before)
        raise Interrupted

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        tune(selection, _config(tiny, lora_dropout=0.1), tmp_path / "resumed", progress=False)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)

    steps_run = []
    real_micro = train_module._micro_batches
    monkeypatch.setattr(train_module, "_micro_batches", lambda step, *a: steps_run.append(step) or real_micro(step, *a))
    resumed = tune(selection, _config(tiny, lora_dropout=0.1), tmp_path / "resumed", progress=False)
    assert steps_run == [2, 3]
    assert resumed.eval_loss_before == straight.eval_loss_before
    a, b = _adapter_weights(tmp_path / "straight"), _adapter_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_lora_and_full_modes_train(tiny, selection, tmp_path):
    for mode in ("lora", "full"):
        result = tune(selection, _config(tiny, mode=mode, max_steps=2, lr=1e-3), tmp_path / mode, progress=False)
        assert result.eval_loss_after < result.eval_loss_before, mode
    assert (tmp_path / "full" / "model.safetensors").exists()


def test_cli_tune_then_merge(tiny, selection, tmp_path):
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from critstep.cli import cli

    out, merged = tmp_path / "run", tmp_path / "merged"
    runner = CliRunner()
    result = runner.invoke(cli, ["tune", str(selection), "--model", str(tiny), "--out", str(out), "--max-steps", "2",
                                 "--max-seq-len", "256", "--set", "compute_dtype=float32", "--set", "lr=0.01", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and "eval loss on held-out selected steps" in result.output
    result = runner.invoke(cli, ["merge", str(out), "--out", str(merged)])
    assert result.exit_code == 0, result.output

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), out).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_merge_rejects_a_directory_without_adapter(tmp_path):
    with pytest.raises(InputError, match="not a PEFT adapter"):
        merge_adapter(tmp_path, tmp_path / "out")


def test_selection_file_without_selection_is_an_error(tiny, tmp_path):
    path = tmp_path / "plain.jsonl"
    write_trajectories(path, toy_trajectories(2))
    with pytest.raises(InputError, match=r"plain.jsonl:1: .*no selection"):
        tune(path, _config(tiny), tmp_path / "out", progress=False)


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: smollm2-135m\nlr: 2e-4\nmax_steps: 10\ntarget_modules: [q_proj, v_proj]\n")
    config = TuneConfig.from_yaml(path, {"max_steps": 3, "seed": None})
    assert (config.lr, config.max_steps, config.seed, config.target_modules) == (2e-4, 3, 0, ["q_proj", "v_proj"])
    assert parse_override("lora_dropout=0.1") == ("lora_dropout", 0.1)
    with pytest.raises(ConfigError, match="unknown key"):
        TuneConfig.from_yaml(path, {"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="max_steps must be a int"):
        TuneConfig.from_yaml(path, {"max_steps": "many"})
    with pytest.raises(ConfigError, match="mode must be one of"):
        TuneConfig(mode="qlora4")


@pytest.mark.parametrize("name", ["tune-smollm2-135m-cpu.yaml", "tune-llama3.1-8b-qlora.yaml", "tune-qwen2.5-7b-qlora.yaml"])
def test_shipped_configs_load_and_start_with_their_command(name):
    from critstep.configs import CONFIG_DIR

    path = CONFIG_DIR / name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# critstep tune ") or first.startswith("# accelerate launch ")
    assert f"configs/{name}" in first
    TuneConfig.from_yaml(path)


def test_qlora_gradients_are_the_same_after_an_eval_pass(tiny, selection):
    """bitsandbytes repacks 4-bit weights for CPU inference on eval; training after it must be unchanged."""
    import warnings

    from critstep.models import load_tokenizer
    from critstep.tuner import build_windows, evaluate_loss, load_selection
    from critstep.tuner.loss import supervised_loss
    from critstep.tuner.modeling import load_model
    from critstep.tuner.packing import collate

    config = _config(tiny, lora_dropout=0.0, compute_dtype="bfloat16")
    model = load_model(config, torch.device("cpu"))
    windows, _ = build_windows(load_selection(selection)[:3], load_tokenizer(str(tiny)), None, 256, True)
    batch = collate(windows)

    def lora_grads():
        model.zero_grad()
        model.train()
        loss, n = supervised_loss(model, batch)
        (loss / n).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad and "layers.0." in k}

    before = lora_grads()
    assert evaluate_loss(model, windows, 4096, torch.device("cpu")) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "an autograd kernel was not registered" must not appear
        after = lora_grads()
    assert before.keys() == after.keys() and before
    for k in before:
        torch.testing.assert_close(after[k], before[k])


def test_explicit_eval_set_replaces_the_split(tiny, tmp_path):
    trajectories = toy_trajectories(10)
    train = write_selection(tmp_path / "train.jsonl", trajectories[:7])
    held = write_selection(tmp_path / "held.jsonl", trajectories[7:])
    result = tune(train, _config(tiny, max_steps=1, eval_fraction=0.5), tmp_path / "run", progress=False, eval_source=held)
    assert result.stats["train"]["trajectories"] == 7
    assert result.stats["eval_ids"] == [t.id for t in trajectories[7:]]
    assert result.eval_loss_before is not None
