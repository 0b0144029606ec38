"""`Trajectory.task` is the task, not the instruction: ShareGPT/AgentInstruct/ETO records open with a
generic instruction the agent acknowledges ("OK") before the task comes. Read raw, such a record must
give the features its corpus layout gives (instruction in the system prompt, acknowledgement dropped),
the layout the shipped distilled model was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from critstep.distill.features.cache import content_key
from critstep.distill.features.semantic import texts_of
from critstep.distill.features.structural import structural_features
from critstep.formats import read_trajectories
from critstep.trajectory import Message, Trajectory

ACKNOWLEDGED = ["agentinstruct_alfworld", "agentinstruct_db", "agentinstruct_kg", "agentinstruct_webshop", "eto_sharegpt"]


@pytest.mark.parametrize("name", ACKNOWLEDGED)
def test_the_task_is_the_turn_after_the_acknowledgement(shared: Path, name: str) -> None:
    trajectories = read_trajectories(shared / "raw" / f"{name}.sample.json")
    assert trajectories
    for t in trajectories:
        ack = next(i for i, m in enumerate(t.messages) if m.acknowledgement)
        assert t.task_index == ack + 1 and t.task == t.messages[ack + 1].content
        instruction = t.messages[0].content
        assert t.task != instruction and not t.task.startswith(instruction[:40])


def test_raw_agentinstruct_gives_the_corpus_layouts_features(shared: Path) -> None:
    corpus = {t.id: t for t in read_trajectories(shared / "corpus.jsonl")}
    pairs = []
    for name in ACKNOWLEDGED[:4]:
        env = name.split("_", 1)[1]
        for t in read_trajectories(shared / "raw" / f"{name}.sample.json"):
            if f"agentinstruct/{env}/{t.id}" in corpus:
                pairs.append((t, corpus[f"agentinstruct/{env}/{t.id}"]))
    assert len(pairs) >= 12
    for raw, normalized in pairs:
        assert raw.task == normalized.task, raw.id
        assert texts_of(raw) == texts_of(normalized), raw.id  # what the embedder sees
        np.testing.assert_array_equal(structural_features(raw), structural_features(normalized), err_msg=raw.id)


def test_without_an_acknowledgement_the_task_is_the_first_user_message(shared: Path) -> None:
    for name in ("tau_bench_gpt-4o-airline.first12.json", "fireact_multitask_multimethod.head40.jsonl", "react_alfworld_3prompts.json"):
        for t in read_trajectories(shared / "raw" / name):
            assert t.task == next(m.content for m in t.messages if m.role == "user")


def test_feature_cache_keys_tell_the_task_rules_apart() -> None:
    # Features cached when the instruction counted as the task must not be served for the real task.
    messages = [Message("user", "You are an agent. Do as told."), Message("assistant", "OK", acknowledgement=True),
                Message("user", "Find the key."), Message("assistant", "take key")]
    acknowledged = Trajectory("a", messages)
    plain = Trajectory("a", [Message(m.role, m.content) for m in messages])
    assert acknowledged.task == "Find the key." and plain.task == "You are an agent. Do as told."
    assert content_key(acknowledged, "s") != content_key(plain, "s")
    assert acknowledged.steps()[0].observation_before == "Find the key."
