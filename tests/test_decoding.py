"""shared.decoding (re-exported by shared.generate): penalties, min-p, beam search."""

import itertools

import pytest
import torch

from shared.generate import (apply_frequency_penalty, apply_repetition_penalty, beam_search, generate,
                             generate_with_penalties, min_p_filter)
from shared.model import GPTConfig, GPTModel


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models run on one thread


def tiny(vocab=6, seed=0, layers=1, d_model=16, ctx=32):
    torch.manual_seed(seed)
    m = GPTModel(GPTConfig(vocab_size=vocab, context_length=ctx, d_model=d_model, n_heads=2, n_layers=layers)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02-std init, so search matters
        m.tok_emb.weight.mul_(40)
    return m


def test_repetition_penalty_matches_hugging_face():
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=g) * 3
    prev = torch.randint(0, 20, (3, 12), generator=g)
    ref = transformers.RepetitionPenaltyLogitsProcessor(1.7)(prev, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, prev, 1.7), ref)
    # every seen token becomes less likely, unseen ones keep their logit
    out = apply_repetition_penalty(logits, prev, 1.7)
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, prev, True)
    assert bool((out[seen] < logits[seen]).all() or (logits[seen] == 0).any())
    assert torch.equal(out[~seen], logits[~seen])


def test_frequency_and_presence_penalty_by_hand():
    logits = torch.zeros(1, 5)
    prev = torch.tensor([[1, 1, 1, 3]])
    out = apply_frequency_penalty(logits, prev, frequency=0.5, presence=0.25)
    assert torch.allclose(out, torch.tensor([[0.0, -1.75, 0.0, -0.75, 0.0]]))


def test_min_p_matches_hugging_face_and_scales_with_confidence():
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 50, generator=g) * 2
    ref = transformers.MinPLogitsWarper(0.1)(None, logits.clone())
    assert torch.equal(torch.isfinite(min_p_filter(logits, 0.1)), torch.isfinite(ref))
    confident = torch.tensor([[8.0] + [0.0] * 9])
    unsure = torch.zeros(1, 10)
    assert int(torch.isfinite(min_p_filter(confident, 0.1)).sum()) == 1
    assert int(torch.isfinite(min_p_filter(unsure, 0.1)).sum()) == 10


@pytest.mark.parametrize("bad", [dict(repetition_penalty=0.0), dict(repetition_penalty=-1),
                                 dict(min_p=1.5), dict(frequency_penalty="x"), dict(penalty_window=0)])
def test_bad_penalty_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).replace("_penalty", "")):
        generate_with_penalties(tiny(), torch.tensor([[1, 2]]), 3, **bad)


def test_no_penalty_equals_generate_greedy_and_sampled():
    m, idx = tiny(vocab=30, layers=2), torch.tensor([[1, 2, 3]])
    assert torch.equal(generate_with_penalties(m, idx, 40), generate(m, idx, 40))  # also past the context
    a = generate_with_penalties(m, idx, 20, temperature=0.9, top_k=10, generator=torch.Generator().manual_seed(3))
    b = generate(m, idx, 20, temperature=0.9, top_k=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_penalty_breaks_a_greedy_loop():
    m, idx = tiny(vocab=30, layers=2, seed=3), torch.tensor([[1, 2, 3]])
    plain = generate(m, idx, 24)[0, 3:].tolist()
    fixed = generate_with_penalties(m, idx, 24, frequency_penalty=2.0)[0, 3:].tolist()
    assert len(set(fixed)) > len(set(plain))


def _brute_force(model, idx, n, eos, length_penalty):
    """Best sum-log-prob / length**lp over every sequence of <= n tokens (EOS ends one)."""
    V = model.cfg.vocab_size
    best = (-float("inf"), None)
    for L in range(1, n + 1):
        for seq in itertools.product(range(V), repeat=L):
            if eos is not None and eos in seq[:-1]:
                continue
            if L < n and (eos is None or seq[-1] != eos):
                continue
            ids = torch.cat([idx, torch.tensor([seq])], 1)
            with torch.no_grad():
                logp = torch.log_softmax(model(ids)[0, idx.size(1) - 1:-1], -1)
            s = float(logp.gather(1, torch.tensor(seq)[:, None]).sum()) / L ** length_penalty
            best = max(best, (s, seq))
    return best


@pytest.mark.parametrize("eos, lp", [(None, 1.0), (3, 1.0), (3, 0.0), (3, 2.0)])
def test_wide_beam_equals_brute_force(eos, lp):
    m, idx = tiny(vocab=4, seed=1), torch.tensor([[0, 1]])
    score, seq = _brute_force(m, idx, 3, eos, lp)
    ids, got = beam_search(m, idx, 3, num_beams=20, length_penalty=lp, eos_id=eos)  # >= every prefix
    assert tuple(ids[0, 2:].tolist()) == seq
    assert got == pytest.approx(score, abs=1e-4)


def test_beam_one_is_greedy_and_more_beams_find_likelier_text():
    m, idx = tiny(vocab=12, seed=2, layers=2), torch.tensor([[1, 5]])
    ids1, s1 = beam_search(m, idx, 8, num_beams=1, length_penalty=0.0)
    assert torch.equal(ids1, generate(m, idx, 8))
    with torch.no_grad():
        logp = torch.log_softmax(m(ids1)[0, 1:-1], -1)
    assert s1 == pytest.approx(float(logp.gather(1, ids1[0, 2:, None]).sum()), abs=1e-4)
    _, s8 = beam_search(m, idx, 8, num_beams=8, length_penalty=0.0)
    assert s8 >= s1 - 1e-6


def test_beam_search_bad_input():
    m = tiny()
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(m, torch.tensor([[1]]), 3, num_beams=0)
    with pytest.raises(ValueError, match="one prompt"):
        beam_search(m, torch.tensor([[1], [2]]), 3)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(m, torch.tensor([[1]]), 3, length_penalty="long")
