"""The local generation backend on a tiny random Llama: batched KV-cache decoding gives what
transformers' `generate` gives, the NLL is the tuner's loss, windows give every step its history,
live conversations reuse their cache, and adapters are applied."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.eval_support import shared_talkative_llama
from fixtures.tuner_support import toy_trajectories

from critstep.evaluation.local import LocalModel
from critstep.evaluation.windows import eval_windows
from critstep.trajectory import Message, Trajectory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return shared_talkative_llama(tmp_path_factory)


def long_trajectory(turns: int = 14) -> Trajectory:
    messages = [Message("system", "You are an agent in a lab. Reply with one action."), Message("user", "Your task is to boil water.")]
    for i in range(turns):
        messages.append(Message("assistant", f"open cupboard {i} and look inside it carefully"))
        messages.append(Message("user", f"The cupboard {i} is open. In it you see a pot, a cup and {i} spoons of various sizes."))
    return Trajectory("long", messages, {"env": "sciworld"})


def outputs_of(lm: LocalModel, trajectory: Trajectory, steps: list[int] | None = None) -> list:
    """The step outputs of one trajectory."""
    ((_, outputs),) = lm.evaluate_trajectories([(trajectory, steps)])
    return outputs


def test_batched_cached_decoding_equals_generate(tiny):
    import torch

    lm = LocalModel.load(str(tiny), device="cpu", max_len=160, max_new_tokens=6, batch_size=3)
    trajectory = long_trajectory(8)
    rendered = lm.render(trajectory)
    windows = eval_windows(rendered, lm.max_len)
    assert len(windows) > 1  # the prompts come from several windows, rows of different lengths
    outputs = {o.step: o for o in outputs_of(lm, trajectory)}
    assert sorted(outputs) == list(range(len(rendered.spans)))
    for window in windows:
        ids = [rendered.input_ids[p] for p in window.positions]
        for step, (start, _) in zip(window.steps, window.spans, strict=True):
            prompt = torch.tensor([ids[:start]])
            expected = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=6,
                                         eos_token_id=sorted(lm.stop_ids), pad_token_id=lm.tokenizer.pad_token_id)[0, start:].tolist()
            expected = [t for t in expected if t not in lm.stop_ids]
            assert expected, "the tiny model should say something"
            assert outputs[step].generated == lm.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert len({o.generated for o in outputs.values()}) > 3


def test_steps_of_many_trajectories_decode_together_as_alone(tiny):
    """Rows from different windows and trajectories share decoding batches without changing a token."""
    together = LocalModel.load(str(tiny), device="cpu", max_len=160, max_new_tokens=5, batch_size=5)
    alone = LocalModel(together.model, together.tokenizer, max_len=160, max_new_tokens=5, batch_size=1)
    trajectories = [long_trajectory(6), *toy_trajectories(2)]
    items = [(trajectories[0], [0, 2, 5]), (trajectories[1], None), (trajectories[2], [3])]
    results = list(together.evaluate_trajectories(items))
    assert [t.id for t, _ in results] == [t.id for t, _ in items]  # input order
    for (t, steps), (_, outputs) in zip(items, results, strict=True):
        assert [o.step for o in outputs] == (steps or list(range(t.n_steps)))
        expected = outputs_of(alone, t, steps)
        assert [(o.generated, o.n_tokens) for o in outputs] == [(o.generated, o.n_tokens) for o in expected]
        assert [o.nll_sum for o in outputs] == pytest.approx([o.nll_sum for o in expected], rel=1e-5)


def test_gold_turn_nll_is_the_tuners_eval_loss(tiny):
    """On trajectories that fit one window, the NLL of the selected steps equals `critstep tune`'s eval loss."""
    from critstep.tuner import evaluate_loss, make_windows, render_trajectory

    lm = LocalModel.load(str(tiny), device="cpu", max_len=512, max_new_tokens=1)
    total, tokens, windows = 0.0, 0, []
    for t in toy_trajectories(3):
        selected = [0, 2]
        windows += make_windows(render_trajectory(t, selected, lm.tokenizer), 512)
        out = {o.step: o for o in outputs_of(lm, t)}
        total += sum(out[k].nll_sum for k in selected)
        tokens += sum(out[k].n_tokens for k in selected)
    assert total / tokens == pytest.approx(evaluate_loss(lm.model, windows, 512, "cpu"), rel=1e-5)


def test_windows_cover_each_step_once_with_history(tiny):
    from critstep.models import load_tokenizer
    from critstep.tuner.render import render_trajectory

    rendered = render_trajectory(long_trajectory(30), [], load_tokenizer(str(tiny)))
    max_len = 200
    head = rendered.prompt_end
    windows = eval_windows(rendered, max_len)
    assert sorted(k for w in windows for k in w.steps) == list(range(30))
    for w in windows:
        assert len(w) <= max_len
        assert w.positions[:head] == list(range(head))  # system prompt and task kept
        for k, (start, end) in zip(w.steps, w.spans, strict=True):
            s, e = rendered.spans[k]
            assert [rendered.input_ids[p] for p in w.positions[start:end]] == rendered.input_ids[s:e]
            assert start - head >= min((max_len - head) // 2, s - head)  # at least half the room as history
    assert eval_windows(rendered, 10_000)[0].positions == list(range(rendered.spans[-1][1]))  # fits: one window, all history


def test_live_conversation_reuses_its_cache_and_answers_as_without(tiny):
    lm = LocalModel.load(str(tiny), device="cpu", max_len=2048, max_new_tokens=6)
    fresh = LocalModel(lm.model, lm.tokenizer, max_len=2048, max_new_tokens=6)
    messages = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Your task is to find a plant."}]
    for turn in range(4):
        read_before = lm.timing.prompt_tokens
        reply = lm.respond(messages)
        fresh.reset_chat()
        assert reply == fresh.respond(messages)
        if turn:  # only the last reply and the new observation are read again
            assert lm.timing.prompt_tokens - read_before < len(lm._render_ids(messages)) / 2
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"You see nothing special ({turn})."}]


def test_live_conversation_drops_oldest_turns_to_fit(tiny):
    lm = LocalModel.load(str(tiny), device="cpu", max_len=120, max_new_tokens=8)
    messages = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Your task is to find a plant."}]
    for turn in range(12):
        messages += [{"role": "assistant", "content": f"go to room {turn}"}, {"role": "user", "content": f"You are in room {turn}. It is empty."}]
    lm.respond(messages)
    assert 0 < len(lm._chat_ids) - lm.timing.generated_tokens <= 120 - 8
    assert lm._dropped_turns > 0
    text = lm.tokenizer.decode(lm._chat_ids)
    assert "Your task is to find a plant." in text and "room 11" in text and "room 0." not in text


def test_adapter_is_applied(tiny, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    trajectory = toy_trajectories(1)[0]

    plain = LocalModel.load(str(tiny), device="cpu", max_new_tokens=1)
    tuned = LocalModel.load(str(tiny), adapter=tmp_path / "adapter", device="cpu", max_new_tokens=1)
    nll = lambda lm: sum(o.nll_sum for o in outputs_of(lm, trajectory))  # noqa: E731
    assert nll(tuned) != pytest.approx(nll(plain), rel=1e-3)
    unmerged_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), tmp_path / "adapter").eval()
    unmerged = LocalModel(unmerged_model, tuned.tokenizer, max_new_tokens=1)
    assert nll(tuned) == pytest.approx(nll(unmerged), rel=1e-4)  # merged for speed, same model


def test_not_an_adapter_is_one_clear_error(tiny, tmp_path):
    from critstep.errors import InputError

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a PEFT adapter"):
        LocalModel.load(str(tiny), adapter=tmp_path / "empty", device="cpu")
