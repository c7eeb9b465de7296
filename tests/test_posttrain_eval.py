"""Chapter 7 evaluation helpers: held-out-play split, speaker stripping, naive Bayes, Wilson
intervals, few-shot prompts, held-out bits per byte, the head learning rate."""

import math

import numpy as np
import pytest
import torch

from shared.data import VAL_PLAYS, shakespeare_plays
from shared.finetune import (LABELS, GPTClassifier, NaiveBayesClassifier, bag_of_words, heldout_play_split,
                             lm_bits_per_byte, majority_class, make_genre_dataset, play_label, set_trainable,
                             strip_speaker_lines, train_classifier)
from shared.instruct import few_shot_exact_match, format_few_shot
from shared.model import GPTConfig, GPTModel
from shared.stats import format_rate, wilson_interval


def test_wilson_matches_scipy_and_edges():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 10), (3, 10), (29, 100), (160, 300), (300, 300)):
        ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
        lo, hi = wilson_interval(k, n, z=float(scipy_stats.norm.ppf(0.975)))
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert format_rate(29, 100) == "29.0% [21.0, 38.5] (29/100)"
    with pytest.raises(ValueError, match="k must be"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must be"):
        wilson_interval(0, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        wilson_interval(0.5, 10)


def test_heldout_split_tests_on_plays_never_pretrained_on():
    train, val, test = heldout_play_split(val_per_label=2, seed=0)
    assert {p.slug for p in test} == set(VAL_PLAYS)
    assert len(val) == 2 * len(LABELS) and {play_label(p) for p in val} == set(LABELS)
    slugs = [p.slug for p in train + val + test]
    assert len(slugs) == len(set(slugs)) == len(shakespeare_plays())
    assert heldout_play_split(seed=0) == (train, val, test)
    with pytest.raises(ValueError, match="val_per_label"):
        heldout_play_split(val_per_label=0)
    with pytest.raises(ValueError, match="test_slugs"):
        heldout_play_split(test_slugs=("no-such-play",))


def test_strip_speaker_lines_keeps_verse_ending_in_colon():
    text = "KING HENRY V:\nOnce more unto the breach:\nSo say I:\n\nFirst Witch:\nHail!\n\nMACBETH:\nSpeak, if you can: what are you?"
    assert strip_speaker_lines(text) == "Once more unto the breach:\nSo say I:\nHail!\nSpeak, if you can: what are you?"
    plays = [p for p in shakespeare_plays() if p.slug in ("macbeth", "richard-ii", "twelfth-night")]
    enc = lambda s: [ord(c) % 256 for c in s]  # noqa: E731
    with_names = make_genre_dataset(enc, plays, 6, max_tokens=400, seed=0)
    stripped = make_genre_dataset(enc, plays, 6, max_tokens=400, seed=0, strip_speakers=True)
    assert [p.slug for p in with_names] == [p.slug for p in stripped]  # the same passages
    assert all("MACBETH:" not in p.text and "KING RICHARD II:" not in p.text for p in stripped)
    assert any("MACBETH:" in p.text or "KING RICHARD II:" in p.text for p in with_names)


def test_naive_bayes_against_a_hand_computation():
    texts, labels = ["king crown king", "fool love", "crown war"], [2, 0, 2]
    nb = NaiveBayesClassifier(alpha=1.0).fit(texts, labels, n_classes=3)
    # vocab {king, crown, fool, love, war}; class 2 counts king 2, crown 2, war 1 (+1 each) / (5 + 5)
    assert math.exp(nb.log_p_word[2, nb.vocab["king"]]) == pytest.approx(3 / 10)
    assert math.exp(nb.log_p_word[0, nb.vocab["king"]]) == pytest.approx(1 / 7)
    assert nb.log_prior[1] == -np.inf and math.exp(nb.log_prior[2]) == pytest.approx(2 / 3)
    post = nb.log_posterior(["love love unknownword"])
    want0 = math.log(1 / 3) + 2 * math.log(2 / 7)
    assert post[0, 0] == pytest.approx(want0)
    assert nb.predict(["love", "king war", "zzz"]) == [0, 2, 2]  # unseen words: the prior decides
    assert bag_of_words("O, I'll GO!") == ["o", "i'll", "go"]
    assert majority_class([1, 2, 2, 1, 0]) == 1
    with pytest.raises(ValueError, match="alpha"):
        NaiveBayesClassifier(alpha=0)
    with pytest.raises(ValueError, match="labels"):
        nb.fit(["a"], [0, 1])


CFG = GPTConfig(vocab_size=64, context_length=16, d_model=16, n_heads=2, n_layers=2)


class ByteTok:
    def encode(self, text, allowed_special=()):
        return [min(ord(c), 62) for c in text] if text != "<|endoftext|>" else [63]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i != 63)


def test_lm_bits_per_byte_uniform_model_is_log2_vocab():
    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: zero embeddings too -> uniform logits
    text = "".join(chr(40 + (i * 7) % 20) for i in range(500))
    assert lm_bits_per_byte(model, ByteTok(), text, max_windows=4) == pytest.approx(math.log2(64), rel=1e-5)
    with pytest.raises(ValueError, match="context_length"):
        lm_bits_per_byte(model, ByteTok(), "short")


def test_few_shot_prompt_and_scoring():
    shots = [{"instruction": "Add.", "input": f"{a} + 1", "output": str(a + 1), "task": "add"} for a in range(5)]
    prompt = format_few_shot({"instruction": "Add.", "input": "7 + 1"}, shots[:2])
    assert prompt == "Add.\nInput: 0 + 1\nOutput: 1\nInput: 1 + 1\nOutput: 2\nInput: 7 + 1\nOutput:"
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=64, d_model=16, n_heads=2, n_layers=1)).eval()
    score, preds = few_shot_exact_match(model, ByteTok(), shots[:2], shots, k=2, max_new_tokens=4)
    assert 0.0 <= score <= 1.0 and len(preds) == 2 and all("\n" not in p for p in preds)
    with pytest.raises(ValueError, match="shots"):
        few_shot_exact_match(model, ByteTok(), shots[:1], shots[:2], k=3)


def test_head_gets_its_own_learning_rate_and_best_step_is_restored():
    torch.manual_seed(0)
    clf = GPTClassifier(GPTModel(CFG), n_classes=3)
    set_trainable(clf, "all")
    from shared.finetune import Passage
    data = [Passage(ids=(1 + i % 5, 2, 3), label=i % 3, slug="x", text="") for i in range(12)]
    body_before = clf.model.tok_emb.weight.detach().clone()
    head_before = clf.head.weight.detach().clone()
    hist = train_classifier(clf, data, steps=1, batch_size=12, lr=1e-12, head_lr=1e-2)
    assert (clf.head.weight - head_before).abs().max() > 1e-4       # the head moved (lr 1e-2)
    assert (clf.model.tok_emb.weight - body_before).abs().max() < 1e-8  # the body barely (lr 1e-12)
    hist = train_classifier(clf, data, steps=4, batch_size=4, lr=1e-3, val_data=data, eval_every=2)
    assert [s for s, _ in hist["val"]] == [2, 4] and hist["best_step"] in (2, 4)
    with pytest.raises(ValueError, match="val_data"):
        train_classifier(clf, data, steps=2, eval_every=1)
    with pytest.raises(ValueError, match="head_lr"):
        train_classifier(clf, data, steps=2, head_lr=0.0)
