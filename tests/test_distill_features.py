"""Feature groups: structural on hand-made trajectories, token features with a tiny random LM
(one forward pass per window, scores equal to a direct computation), semantic with minilm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.tuner_support import save_tiny_llama

from critstep.distill.features import GROUPS, FeatureConfig, FeatureExtractor, hidden, parse_groups, progress, structural, token
from critstep.distill.features.cache import FeatureCache, content_key
from critstep.errors import ConfigError
from critstep.trajectory import Message, Trajectory


def sciworld_like() -> Trajectory:
    msgs = [Message("system", "You are an agent."), Message("user", "Task: measure the friction of the brick.")]
    for i, (act, obs) in enumerate(
        [("look around", "A room. (score: 0.0)"), ("go to kitchen", "Nothing happens."), ("go to kitchen", "You move. (score: 0.1)"), ("pick up stopwatch", "Done. (score: 0.35)")]
    ):
        msgs += [Message("assistant", f"Think: step {i}\n{act}"), Message("user", obs)]
    return Trajectory("t1", msgs, {"env": "sciworld"})


def test_structural_features_by_hand() -> None:
    x = structural.structural_features(sciworld_like())
    col = {n: i for i, n in enumerate(structural.NAMES)}
    assert x.shape == (4, len(structural.NAMES))
    assert x[:, col["pos_rel"]].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert x[:, col["is_first"]].tolist() == [1, 0, 0, 0] and x[:, col["is_last"]].tolist() == [0, 0, 0, 1]
    assert x[:, col["fail_after"]].tolist() == [0, 1, 0, 0] and x[:, col["fail_before"]].tolist() == [0, 0, 1, 0]
    assert x[:, col["score_delta"]].tolist() == pytest.approx([0.0, 0.0, 0.1, 0.25])
    assert x[:, col["repeat_action"]].tolist() == [0, 0, 1, 0]
    hashed = x[:, col["action_hash_0"] :]
    assert (hashed.sum(1) == 1).all() and (hashed[1] == hashed[2]).all()  # one bin per step; same action, same bin


def test_structural_handles_tool_calls_and_no_steps() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "get_user_details", "arguments": "{}"}}
    t = Trajectory("t", [Message("user", "hi"), Message("assistant", "", tool_calls=[call]), Message("tool", '{"error": "not found"}', tool_call_id="c")])
    x = structural.structural_features(t)
    col = {n: i for i, n in enumerate(structural.NAMES)}
    assert x[0, col["n_tool_calls"]] == 1 and x[0, col["fail_after"]] == 1
    assert structural.structural_features(Trajectory("e", [Message("user", "hi")])).shape == (0, len(structural.NAMES))
    X, index = FeatureExtractor(FeatureConfig(groups=("structural",)), cache=None).transform([Trajectory("e", [Message("user", "hi")]), t])
    assert X.shape[0] == 1 and index == [("t", 0)]


def test_feature_names_match_columns() -> None:
    fx = FeatureExtractor(FeatureConfig(groups=("structural",)), cache=None)
    X, _ = fx.transform([sciworld_like()])
    assert X.shape[1] == len(fx.feature_names())
    with_hashes = FeatureConfig(groups=("structural",), context=False, action_hashes=True)
    assert FeatureExtractor(with_hashes, cache=None).transform([sciworld_like()])[0].shape[1] == len(structural.NAMES)
    without = FeatureExtractor(FeatureConfig(groups=("structural", "progress"), context=False), cache=None)
    X, _ = without.transform([sciworld_like()])
    assert X.shape[1] == len(without.feature_names()) == len(structural.NAMES) - structural.ACTION_BINS + len(progress.NAMES)
    assert not any(n.startswith("action_hash_") for n in without.feature_names())
    # a model saved before the setting existed had the hashed names: its config still computes them
    assert FeatureConfig.from_dict({"groups": ["structural"]}).action_hashes and not FeatureConfig().action_hashes


def test_progress_features_by_hand() -> None:
    x = progress.progress_features(sciworld_like())
    col = {n: i for i, n in enumerate(progress.NAMES)}
    assert x.shape == (4, len(progress.NAMES))
    assert x[:, col["score_gain_share"]].tolist() == pytest.approx([0, 0, 0.1 / 0.35, 0.25 / 0.35])
    assert x[:, col["score_gain_rank"]].tolist() == pytest.approx([0, 0, 0.5, 1.0])  # the biggest jump ranks first
    assert x[:, col["look_action"]].tolist() == [1, 1, 1, 0]  # look, go, go: not acting on the task state
    assert x[:, col["first_use_of_verb"]].tolist() == [1, 1, 0, 1]
    assert x[:, col["same_as_previous"]].tolist() == [0, 0, 1, 0] and x[:, col["run_start"]].tolist() == [0, 1, 0, 0]
    assert x[:, col["recovers_from_failure"]].tolist() == [0, 0, 1, 0]  # after "Nothing happens." it works
    assert x[:, col["state_change_after"]].tolist() == [0, 0, 1, 0]  # "You move."
    assert x[:, col["traj_len_log"]].tolist() == pytest.approx([np.log1p(4)] * 4)


def test_parse_groups() -> None:
    assert parse_groups("structural,semantic") == ("semantic", "structural")
    with pytest.raises(ConfigError, match="unknown feature group"):
        parse_groups("semantic,vibes")


def test_cache_round_trip_and_key(tmp_path: Path) -> None:
    t = sciworld_like()
    cache = FeatureCache(tmp_path, "g")
    key = content_key(t, "m", 1)
    assert content_key(t, "m", 2) != key and content_key(t, "m", 1) == key
    assert cache.get(key) is None
    cache.put(key, np.arange(6.0).reshape(2, 3))
    assert np.array_equal(cache.get(key), np.arange(6.0).reshape(2, 3))
    next((tmp_path / "g").rglob("*.npz")).write_bytes(b"damaged")
    assert cache.get(key) is None  # recomputed, not trusted


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-lm"))


def test_token_scores_one_forward_per_window_and_match_direct(tiny_lm: Path) -> None:
    import torch

    from critstep.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_lm), device="cpu")
    calls = []
    model.register_forward_hook(lambda m, args, kwargs, out: calls.append(1), with_kwargs=True)
    t = sciworld_like()
    scorer = token.TokenScorer(model, tok, window_tokens=48, message_tokens=16, step_tokens=16)
    rendered = token.render(t, tok, 16, 16)
    plan = token.windows(rendered, 48)
    assert sorted(k for _, members in plan for k in members) == [0, 1, 2, 3]
    rows = scorer.score_one(t)
    distinct_steps = len({tuple(s) for s in rendered.step_ids})
    n_nocontext_batches = len(calls) - len(plan)
    assert 1 <= n_nocontext_batches <= distinct_steps and len(plan) < 4 + 1
    # Step 3 recomputed directly: NLL of its tokens given the window's prefix.
    start, members = next(p for p in plan if 3 in p[1])
    a, b = rendered.spans[3]
    ids = torch.tensor([rendered.ids[start : start + 48]])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    nll = -logp[a - start - 1 : b - start - 1].gather(-1, ids[0, a - start : b - start, None]).squeeze(-1)
    assert rows[3, token.NAMES.index("nll_mean")] == pytest.approx(nll.mean().item(), rel=1e-4)
    assert rows[3, token.NAMES.index("log_ifd")] == pytest.approx(rows[3, 0] - rows[3, 4])
    assert scorer.tokens_processed > 0


def test_hidden_states_read_each_step_and_its_outcome_in_windows(tiny_lm: Path) -> None:
    import torch

    from critstep.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_lm), device="cpu")
    t = sciworld_like()
    rendered = token.render(t, tok, 16, 16)
    reader = hidden.HiddenStateReader(model, tok, window_tokens=40, message_tokens=16, step_tokens=16)
    plan = token.windows(rendered, 40, hidden.outcome_spans(rendered))
    assert len(plan) > 1  # the window is smaller than the trajectory: several forward passes
    states = reader.read_one(t)
    assert states.shape == (4, len(hidden.READOUTS), model.config.hidden_size) and states.dtype == np.float16
    mid, last = reader.layers
    for start, members in plan:  # every readout equals a direct forward over that window
        ids = torch.tensor([rendered.ids[start : start + 40]])
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True).hidden_states
        for k in members:
            step_end, outcome_end = rendered.spans[k][1] - 1 - start, rendered.outcome_ends[k] - 1 - start
            assert outcome_end > step_end  # the outcome (the observation after the step) is read too
            expected = [out[mid][0, step_end], out[mid][0, outcome_end], out[last][0, step_end], out[last][0, outcome_end]]
            for j, e in enumerate(expected):
                assert np.allclose(states[k, j], e.numpy(), rtol=1e-2, atol=1e-2)
    projected = hidden.project(states, 8)
    assert projected.shape == (4, 16) and np.isfinite(projected).all()


def test_token_features_through_the_extractor_are_cached(tiny_lm: Path, tmp_path: Path) -> None:
    config = FeatureConfig(groups=("token",), lm=str(tiny_lm), dtype="float32", window_tokens=64)
    first, _ = FeatureExtractor(config, device="cpu", cache=tmp_path).transform([sciworld_like()])
    again = FeatureExtractor(config, device="cpu", cache=tmp_path)
    second, _ = again.transform([sciworld_like()])
    assert again._scorer is None  # served from the cache: the LM was never loaded
    assert np.array_equal(first, second)


def test_semantic_features_with_minilm() -> None:
    fx = FeatureExtractor(FeatureConfig(groups=("semantic",), embedding_dims=4), cache=None)
    X, index = fx.transform([sciworld_like()])
    assert X.shape == (4, len(fx.feature_names())) and np.isfinite(X).all()
    names = fx.feature_names()
    novelty = X[:, names.index("step_novelty")]
    assert novelty[0] == 1.0 and novelty[2] < novelty[1]  # step 2 repeats step 1's action


def test_trajectories_without_steps_pass_through_every_group(tiny_lm: Path) -> None:
    empty = Trajectory("mind2web/0", [Message("user", "book a flight")])
    config = FeatureConfig(groups=GROUPS, lm=str(tiny_lm), dtype="float32", window_tokens=64)
    X, index = FeatureExtractor(config, device="cpu", cache=None).transform([empty, sciworld_like()])
    assert X.shape[0] == 4 and index[0] == ("t1", 0)
