"""Masks: the supervised tokens decode to exactly the selected steps, under three chat templates."""

from __future__ import annotations

import json

import pytest
from fixtures.tuner_support import FIXTURES, toy_trajectories, write_selection

from critstep.errors import InputError
from critstep.formats import read_trajectories
from critstep.models import load_tokenizer
from critstep.trajectory import Message, Trajectory
from critstep.tuner.render import load_chat_template, render_trajectory

# (template file or None for the tokenizer's ChatML, how a selected turn reads back)
TEMPLATES = {
    "chatml": (None, lambda m: m.text() + "<|im_end|>"),
    "llama3": ("llama3_template.jinja", lambda m: _llama3_turn(m) + "<|eot_id|>"),
    "mistral": ("mistral_template.jinja", lambda m: " " + _mistral_turn(m) + "<|im_end|>"),
}


def _llama3_turn(m: Message) -> str:
    calls = "".join(f'{{"name": "{c["function"]["name"]}", "parameters": {c["function"]["arguments"]}}}' for c in m.tool_calls or [])
    return m.content.strip() + calls


def _mistral_turn(m: Message) -> str:
    calls = "".join(f'{{"name": "{c["function"]["name"]}", "arguments": {c["function"]["arguments"]}}}' for c in m.tool_calls or [])
    return m.content + ("[TOOL_CALLS] " + calls if calls else "")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def _template(name: str) -> str | None:
    file = TEMPLATES[name][0]
    return load_chat_template(FIXTURES / file) if file else None


def _check(trajectory: Trajectory, selected: list[int], tokenizer, name: str) -> None:
    expected_turn = TEMPLATES[name][1]
    rendered = render_trajectory(trajectory, selected, tokenizer, _template(name))
    labels = rendered.labels()
    steps = [trajectory.messages[i] for i in trajectory.step_message_indices]
    assert len(rendered.spans) == len(steps)
    # contiguous runs of supervised tokens = the selected steps, in order
    runs, start = [], None
    for t, label in enumerate([*labels, -100]):
        if label != -100 and start is None:
            start = t
        elif label == -100 and start is not None:
            runs.append((start, t))
            start = None
    assert len(runs) == len(selected)
    for (s, e), k in zip(runs, selected, strict=True):
        decoded = tokenizer.decode(rendered.input_ids[s:e])
        expected = expected_turn(steps[k])
        if name == "llama3":
            # SmolLM2's vocabulary has no <|eot_id|>: one BPE token may straddle the turn's end ("><").
            assert decoded.startswith(expected) and len(decoded) - len(expected) <= 1, (decoded, expected)
        else:
            assert decoded == expected
    assert sum(label != -100 for label in labels) == sum(e - s for s, e in runs)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_supervised_tokens_are_the_selected_turns(tokenizer, name):
    for t in toy_trajectories(3):
        _check(t, [0, 1, 3], tokenizer, name)  # step 1 is a tool call


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_real_corpus_trajectories(tokenizer, name, shared):
    trajectories = read_trajectories(shared / "corpus.jsonl")
    picked: dict[str, Trajectory] = {}
    for t in trajectories:
        if t.n_steps >= 3 and t.env not in picked:
            picked[t.env] = t
    assert "tau-airline" in picked  # tool calls and tool results
    for t in picked.values():
        _check(t, [0, t.n_steps // 2, t.n_steps - 1], tokenizer, name)


def test_prompt_end_is_the_first_turn(tokenizer):
    t = toy_trajectories(1)[0]
    rendered = render_trajectory(t, [2], tokenizer)
    head = tokenizer.decode(rendered.input_ids[: rendered.prompt_end])
    assert head.endswith("put the mug 0 in the sink.<|im_end|>\n<|im_start|>assistant\n")


def test_template_error_names_the_trajectory(tokenizer):
    t = toy_trajectories(1)[0]
    with pytest.raises(InputError, match="toy/0.*chat template failed"):
        render_trajectory(t, [0], tokenizer, "{{ raise_exception('no tools here') }}")


def test_dump_supervised_cli(tmp_path, tokenizer):
    from click.testing import CliRunner

    from critstep.cli import cli

    selection = write_selection(tmp_path / "sel.jsonl", toy_trajectories(2))
    out = tmp_path / "spans.jsonl"
    result = CliRunner().invoke(cli, ["tune", str(selection), "--model", "smollm2-135m", "--dump-supervised", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["toy/0", "toy/1"]
    assert [s["step"] for s in rows[0]["spans"]] == [0, 2]
    assert rows[0]["spans"][1]["text"] == "take mug 0 from counter 1<|im_end|>"


def test_template_that_rewrites_the_turn_prefix_is_an_error(tokenizer):
    # The generation prompt differs from the header the finished turn gets: spans cannot be located.
    template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant-to-be>{% endif %}"
    )
    with pytest.raises(InputError, match="toy/0.*cannot be told apart"):
        render_trajectory(toy_trajectories(1)[0], [0], tokenizer, template)


# Mistral-like (the system prompt moves to the last user turn, so the turn must be searched for in the
# whole rendering), with assistant turns that end in a bare newline, nothing distinctive.
REWRITING_TEMPLATE = (
    "{%- set ns = namespace(last=-1) %}{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{{- '[INST] ' }}"
    "{%- if loop.index0 == ns.last %}{{- messages[0].content + ' ' }}{%- endif %}{{- m.content + '[/INST]' }}"
    "{%- elif m.role == 'assistant' %}{{- ' ' + m.content + '\n' }}{%- endif %}{%- endfor %}"
)


def test_an_observation_containing_the_turn_text_is_not_taken_for_the_turn(tokenizer):
    t = Trajectory("echo", [
        Message("system", "You are in a room."),
        Message("user", "Task: look around, then stop."),
        Message("assistant", "look"),
        Message("user", "Nothing happens. You look around."),  # holds " look", the next turn's text
        Message("assistant", "look"),
        Message("user", "You see a door."),
        Message("assistant", "stop"),
    ])
    rendered = render_trajectory(t, [1], tokenizer, REWRITING_TEMPLATE)
    start, end = rendered.spans[1]
    assert tokenizer.decode(rendered.input_ids[start:end]) == " look"
    assert tokenizer.decode(rendered.input_ids[:start]).endswith("You look around.[/INST]")


def _byte_tokenizer(cls=None):
    from transformers import ByT5Tokenizer

    tok = (cls or ByT5Tokenizer)()
    tok.chat_template = load_tokenizer("smollm2-135m").chat_template
    return tok


def test_slow_tokenizer_without_offsets_gets_exact_spans():
    tok = _byte_tokenizer()
    assert not tok.is_fast
    t = toy_trajectories(1)[0]
    rendered = render_trajectory(t, [0, 1, 3], tok)
    steps = [t.messages[i] for i in t.step_message_indices]
    for k in (0, 3):
        start, end = rendered.spans[k]
        assert tok.decode(rendered.input_ids[start:end]) == steps[k].text() + "<|im_end|>"


def test_slow_tokenizer_merging_across_a_step_boundary_is_one_clear_error():
    from transformers import ByT5Tokenizer

    class Words(ByT5Tokenizer):
        """Slow, and merges a step's first character with the newline before it (as BPE merges do)."""

        def _tokenize(self, text):
            return [text[k : k + 2] if text[k] == "\n" and k + 1 < len(text) else text[k] for k in range(len(text))
                    if k == 0 or text[k - 1] != "\n"]

        def _convert_token_to_id(self, token):
            return 3 + (sum(map(ord, token)) % 250)

    with pytest.raises(InputError, match="slow \\(Python\\) tokenizer.*use a fast tokenizer"):
        render_trajectory(toy_trajectories(1)[0], [0], _byte_tokenizer(Words))
