"""The supervised-only loss equals the standard full-logits loss, packed or not."""

from __future__ import annotations

import pytest
import torch
from fixtures.tuner_support import save_tiny_llama, toy_trajectories

from critstep.models import load_tokenizer
from critstep.tuner.loss import supervised_loss
from critstep.tuner.packing import collate, pack
from critstep.tuner.render import render_trajectory
from critstep.tuner.windows import make_windows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = save_tiny_llama(tmp_path_factory.mktemp("tiny"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    tokenizer = load_tokenizer("smollm2-135m")
    windows = []
    for i, t in enumerate(toy_trajectories(5)):
        r = render_trajectory(t, [[0], [1, 3], [2], [0, 3], [3]][i], tokenizer)
        windows.extend(make_windows(r, 512))
    return model, windows


def _reference(model, window) -> tuple[float, int]:
    """transformers' own loss: full-vocabulary logits for every position, shifted inside."""
    ids = torch.tensor([window.input_ids])
    labels = torch.tensor([window.labels])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    n = int((labels[:, 1:] != -100).sum())
    return float(out.loss) * n, n


def test_supervised_only_loss_equals_full_logits_loss(setup):
    model, windows = setup
    for w in windows:
        expected, n_expected = _reference(model, w)
        with torch.no_grad():
            loss, n = supervised_loss(model, collate([w]))
        assert n == n_expected == w.n_supervised
        assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_packing_gives_the_same_loss_as_unpacked(setup):
    model, windows = setup
    unpacked = sum(_reference(model, w)[0] for w in windows)
    [group] = pack(windows, batch_tokens=10_000)
    batch = collate(group)
    assert batch.n_sequences == len(windows)
    assert batch.position_ids[0].tolist() == [p for w in group for p in range(len(w))]
    with torch.no_grad():
        packed, n = supervised_loss(model, batch)
    assert n == sum(w.n_supervised for w in windows)
    assert float(packed) == pytest.approx(unpacked, rel=1e-5)


def test_pack_respects_the_token_budget(setup):
    _, windows = setup
    budget = 2 * max(len(w) for w in windows)
    groups = pack(windows, budget)
    assert sorted(id(w) for g in groups for w in g) == sorted(id(w) for w in windows)
    assert all(sum(len(w) for w in g) <= budget for g in groups)
    assert len(groups) < len(windows)
