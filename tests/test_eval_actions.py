"""Env-aware action extraction and matching, on real lines of the shared corpus and on the forms
models write (critstep's tool-call rendering, Hermes/Qwen and Llama 3.1 JSON tool calls)."""

from __future__ import annotations

from collections import Counter

import pytest

from critstep.evaluation.actions import THINK, actions_match, parse_action
from critstep.formats import read_trajectories
from critstep.trajectory import Message


@pytest.fixture(scope="module")
def corpus(shared):
    return {t.id: t for t in read_trajectories(shared / "corpus.jsonl")}


def gold(corpus, tid: str, step: int):
    t = corpus[tid]
    m = t.steps()[step].message
    return parse_action(t.env, m.content, m.tool_calls)


def test_alfworld_actions_on_corpus_lines(corpus):
    knowagent = "knowagent-alfworld/D0/pick_and_place_simple-KeyChain-None-Drawer-208/trial_T20190909_013444_420195"
    # KnowAgent: Think lines and an ActionPath marker before the command
    assert gold(corpus, knowagent, 0).text == "go to shelf 8"
    assert gold(corpus, knowagent, 1).text == "go to shelf 7"
    # ReAct prompts: a thought-only turn is the action `think`
    assert gold(corpus, "react-alfworld/react_put_0", 0).text == THINK
    assert gold(corpus, "react-alfworld/react_put_0", 2).text == "go to cabinet 1"
    # AgentInstruct: THOUGHT / ACTION prefixes in capitals, indented
    assert gold(corpus, "agentinstruct/alfworld/alfworld_219", 0).text == "go to cabinet 1"
    assert gold(corpus, "agentinstruct/alfworld/alfworld_219", 1).text == "go to cabinet 2"


def test_sciworld_actions_on_corpus_lines(corpus):
    assert gold(corpus, "sciworld-gold/boil/var21", 0).text == "look around"
    assert gold(corpus, "sciworld-gold/boil/var21", 1).text == "open door to kitchen"


def test_react_qa_actions_on_corpus_lines(corpus):
    a = gold(corpus, "fireact/3", 0)
    assert (a.name, a.text, a.normalized) == ("search", "search[who owns Longines watch company?]", "search[who owns longines watch company]")
    assert gold(corpus, "fireact/3", 2).text == "finish[1983]"
    # an assistant turn that only says "Observation: Episode finished" carries no action
    assert gold(corpus, "fireact/239", 8).text == THINK


def test_tau_airline_actions_on_corpus_lines(corpus):
    reply = gold(corpus, "tau-airline/task0/trial0", 0)
    assert reply.name == "respond" and reply.text.startswith("To assist you with booking a flight")
    call = gold(corpus, "tau-airline/task0/trial0", 2)
    assert (call.name, call.text) == ("get_user_details", 'get_user_details({"user_id":"mia_li_3668"})')


def test_other_envs_fall_back_to_the_last_line(corpus):
    assert gold(corpus, "agentinstruct/kg/kg_132", 0).text == "get_relations(Gas-generator cycle)"
    assert gold(corpus, "agentinstruct/webshop/webshop_330", 0).text == "search[on-ear headphone noise cancelling price < 180.00]"
    assert gold(corpus, "agentinstruct/os/os_116", 0).text == "ls -1 /etc | wc -l"  # the code block's fence is skipped


def test_every_corpus_step_has_an_action_of_its_env_kind(corpus):
    kinds: Counter = Counter()
    for t in corpus.values():
        for s in t.steps():
            a = parse_action(t.env, s.message.content, s.message.tool_calls)
            assert a.text and a.normalized
            if t.env == "qa-search":
                kinds[("qa-search", a.name)] += 1
            elif t.env == "tau-airline":
                kinds[("tau-airline", "respond" if a.name == "respond" else "tool")] += 1
            elif t.env in ("alfworld", "sciworld"):
                kinds[(t.env, THINK if a.name == THINK else "command")] += 1
    # exact counts over the 1,277 corpus trajectories: every tool call found, thoughts only where no action is written
    assert kinds == Counter({
        ("alfworld", "command"): 2409, ("alfworld", THINK): 74,
        ("sciworld", "command"): 12361,
        ("qa-search", "search"): 1744, ("qa-search", "finish"): 617, ("qa-search", THINK): 9,
        ("tau-airline", "respond"): 1162, ("tau-airline", "tool"): 1052,
    })


def test_a_tool_call_rendered_as_text_matches_the_structured_gold(corpus):
    """Templates without tool-call support see critstep's text form: a model trained on it writes it back."""
    t = corpus["tau-airline/task0/trial0"]
    m = t.steps()[2].message
    assert actions_match(gold(corpus, t.id, 2), parse_action(t.env, m.text())) == (True, True)


def test_tool_call_spellings_and_normalization():
    structured = parse_action("tau-airline", "", [{"type": "function", "function": {"name": "book", "arguments": '{"a": "New York", "n": 2}'}}])
    hermes = parse_action("tau-airline", '<tool_call>\n{"name": "book", "arguments": {"n": 2, "a": "New York"}}\n</tool_call>')
    llama = parse_action("tau-airline", '{"name": "book", "parameters": {"a": "new  york", "n": "2"}}')
    assert actions_match(structured, hermes) == (True, True)  # key order does not matter
    assert actions_match(structured, llama) == (False, True)  # case, spacing and "2" vs 2 only normalize
    other = parse_action("tau-airline", '{"name": "book", "arguments": {"a": "Boston", "n": 2}}')
    assert actions_match(structured, other) == (False, False)
    assert parse_action("tau-airline", "Sure, which date?").name == "respond"


def test_command_normalization():
    assert actions_match(parse_action("alfworld", "put mug 1 in/on sink 1"), parse_action("alfworld", "> Put the mug 1 on sink 1.")) == (False, True)
    assert actions_match(parse_action("sciworld", "open door to kitchen"), parse_action("sciworld", "Action: open the door to kitchen")) == (False, True)
    assert actions_match(parse_action("sciworld", "open door to kitchen"), parse_action("sciworld", "open door to hallway")) == (False, False)
    assert actions_match(parse_action("qa-search", "Action: Finish[The Swatch Group]"), parse_action("qa-search", "finish[swatch group.]")) == (False, True)
    assert parse_action("qa-search", "Thought: hmm\nAction 2: Lookup[founded]").text == "Lookup[founded]"
    assert parse_action("sciworld", "").text == THINK
    assert parse_action("unknown-env", "a\nlast line").text == "last line"


def test_gold_messages_with_content_and_tool_calls_are_the_call():
    m = Message("assistant", "Let me check.", tool_calls=[{"id": "c", "type": "function", "function": {"name": "get_user_details", "arguments": '{"user_id": "x"}'}}])
    assert parse_action("tau-airline", m.content, m.tool_calls).name == "get_user_details"
