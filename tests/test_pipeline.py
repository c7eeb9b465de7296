"""Tests for the data pipeline: shared.cleaning, shared.packing, shared.kjv (re-exported by shared.data)."""

import doctest
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import shared.cleaning as C
import shared.kjv as K
import shared.packing as P
from shared.data import (GPTDataset, join_documents, mix, normalize_text, pack_documents, quality_issues,
                         quality_signals)
from shared.packing import boundary_stats


@pytest.mark.parametrize("module", [C, P, K])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_normalize_text_forms():
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert nfc != nfd and normalize_text(nfd) == nfc and normalize_text(nfc, "NFD") == nfd
    assert len(nfc.encode()) == 5 and len(nfd.encode()) == 6
    assert normalize_text("\ufb01 \uff21 x\u00b2") == "\ufb01 \uff21 x\u00b2"  # NFC keeps compatibility chars
    assert normalize_text("\ufb01 \uff21 x\u00b2", "NFKC") == "fi A x2"
    assert normalize_text("a\r\nb\rc\x00\x07\td") == "a\nb\nc\td"
    assert normalize_text("\u2018it\u2019s\u201d", ascii_quotes=True) == "'it's\""
    s = "Ünïcödé ﬁ 日本"
    for form in C.NORMAL_FORMS:  # idempotent and what unicodedata says
        once = normalize_text(s, form)
        assert normalize_text(once, form) == once == unicodedata.normalize(form, s)


def test_quality_signals_and_issues():
    good = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou owest;
"""
    assert quality_issues(good) == []
    sig = quality_signals("a b\na b\nc")
    assert sig["n_words"] == 5 and sig["duplicate_line_char_fraction"] == pytest.approx(6 / 7)
    assert "symbol ratio" in quality_issues("{}[]<>|#$%^&*()" * 30 + " word" * 60)
    assert "alphabetic words" in quality_issues(" ".join(str(i) for i in range(200)))
    assert "too few or too many words" in quality_issues("Too short.")
    assert "mean word length" in quality_issues("supercalifragilistic " * 80)
    assert quality_signals("")["n_words"] == 0
    with pytest.raises(ValueError, match="unknown signal"):
        quality_issues(good, {"x": ("nope", 0, 1)})


def test_join_and_pack_documents():
    docs = [[5, 6, 7, 8, 9], [10, 11], [], [12]]
    assert join_documents(docs, 0).tolist() == [5, 6, 7, 8, 9, 0, 10, 11, 0, 0, 12, 0]
    x, y = pack_documents(docs, context_length=3, eot_id=0)
    assert x.tolist() == [[5, 6, 7], [8, 9, 0], [10, 11, 0], [12, 0, 0]]
    assert y.tolist() == [[6, 7, 8], [9, 0, -100], [11, 0, -100], [0, -100, -100]]
    logits = torch.zeros(*x.shape, 20)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)  # padding ignored
    assert torch.isfinite(loss)


def test_pack_agrees_with_gptdataset_on_one_document():
    rng = np.random.default_rng(0)
    doc = rng.integers(1, 50, 41)
    x, y = pack_documents([doc], context_length=8, eot_id=0)
    stream = np.concatenate([doc, [0]])  # 42 tokens: 41 pairs -> 6 windows, the last partial
    ds = GPTDataset(stream, context_length=8, stride=8)
    for i in range(len(ds)):
        assert torch.equal(x[i], ds[i][0]) and torch.equal(y[i], ds[i][1])
    assert x.shape == (6, 8) and int((y != -100).sum()) == 41


def test_boundary_stats_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(30):
        lengths = rng.integers(0, 30, rng.integers(1, 8)).tolist()
        T = int(rng.integers(1, 12))
        stats = boundary_stats(lengths, T)
        docs = [np.arange(n) + 1 for n in lengths]
        stream = join_documents(docs, 0)
        owner = np.concatenate([[d] * (n + 1) for d, n in enumerate(lengths) if n]) if any(lengths) else []
        n_win = max((len(stream) - 1) // T, 0)
        crossing = sum(len(set(owner[w * T:(w + 1) * T].tolist())) > 1 for w in range(n_win))
        assert stats["crossing_windows"] == crossing, (lengths, T)
        if any(lengths):
            x, y = pack_documents(docs, T, 0)
            assert stats["packed_windows"] == len(x)
            assert stats["padding_fraction"] == pytest.approx(float((y == -100).float().mean()))


def test_mix_follows_weights_and_walks_each_source():
    sources = {"plays": list(range(100)), "bible": list(range(1000, 1010))}
    stream = mix(sources, {"plays": 0.8, "bible": 0.2}, seed=0)
    draws = [next(stream) for _ in range(5000)]
    frac = sum(n == "bible" for n, _ in draws) / len(draws)
    assert abs(frac - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 5000)
    bible = [item for n, item in draws if n == "bible"]
    for k in range(0, len(bible) - 10, 10):  # each pass is a permutation of the source
        assert sorted(bible[k:k + 10]) == list(range(1000, 1010))
    again = mix(sources, {"plays": 0.8, "bible": 0.2}, seed=0)
    assert [next(again) for _ in range(50)] == draws[:50]
    only = mix(sources, {"plays": 1, "bible": 0}, seed=1)
    assert {next(only)[0] for _ in range(100)} == {"plays"}


def test_kjv_books():
    books = K.kjv_books()
    assert len(books) == 66 and [b.number for b in books] == list(range(1, 67))
    assert books[0].slug == "genesis" and books[0].text.startswith("In the beginning God created")
    assert books[-1].text.rstrip().endswith("Amen.")
    assert set(K.KJV_VAL_BOOKS) <= {b.slug for b in books}
    assert "[" not in books[0].text and "1. " not in books[0].text[:200]
    raw = K.kjv_books(verse_numbers=True, brackets=True)
    assert raw[0].text.startswith("1. In the beginning") and "[was]" in raw[0].text
    val, train = K.load_kjv("val"), K.load_kjv("train")
    assert 0.05 < len(val) / (len(val) + len(train)) < 0.15
    with pytest.raises(ValueError, match="split must be"):
        K.load_kjv("test")


def test_bad_input():
    with pytest.raises(TypeError, match="text must be a str"):
        normalize_text(b"bytes")
    with pytest.raises(ValueError, match="form must be one of"):
        normalize_text("x", "NFX")
    with pytest.raises(TypeError, match="doc must be a str"):
        quality_signals(None)
    with pytest.raises(TypeError, match="encode each document"):
        pack_documents(["a text"], 4, 0)
    with pytest.raises(TypeError, match="sequence of token-id sequences"):
        pack_documents("abc", 4, 0)
    with pytest.raises(ValueError, match="context_length must be an integer"):
        pack_documents([[1]], 0, 0)
    with pytest.raises(ValueError, match="eot_id must be an integer"):
        join_documents([[1]], -1)
    with pytest.raises(ValueError, match="negative token id"):
        pack_documents([[1, -2]], 4, 0)
    with pytest.raises(ValueError, match="1-D"):
        pack_documents([[[1, 2]]], 4, 0)
    with pytest.raises(ValueError, match="nothing to pack"):
        pack_documents([[], []], 4, 0)
    with pytest.raises(ValueError, match="weights must name exactly"):
        mix({"a": [1]}, {"b": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        mix({"a": [1]}, {"a": -1.0})
    with pytest.raises(ValueError, match="at least one weight"):
        mix({"a": [1]}, {"a": 0.0})
    with pytest.raises(ValueError, match="has weight .* but no items"):
        mix({"a": [], "b": [1]}, {"a": 1.0, "b": 1.0})
    with pytest.raises(TypeError, match="mappings"):
        mix([[1]], {"a": 1})
