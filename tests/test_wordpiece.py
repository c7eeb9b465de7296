"""Tests for shared.wordpiece: the HF ``tokenizers`` WordPiece model is the oracle for encoding.

Training is checked against the naive reference loop and against hand-computed scores; the
``tokenizers`` trainer cannot be an oracle for training because it ranks pairs by count (BPE).
"""

import doctest
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.wordpiece as W
from shared.wordpiece import PREFIX, UNK, WordPieceTokenizer, bert_pretokenize, wordpiece_word

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, pre_tokenizers  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def corpus():
    from shared.data import load_shakespeare
    return load_shakespeare("train")[:300_000], load_shakespeare("val")


@pytest.fixture(scope="module")
def trained(corpus):
    return WordPieceTokenizer.train(corpus[0], vocab_size=1500)


def hf_tokenizer(tok: WordPieceTokenizer):
    hf = tokenizers.Tokenizer(models.WordPiece(dict(tok.token_to_id), unk_token=UNK,
                                               max_input_chars_per_word=tok.max_input_chars_per_word))
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix=PREFIX, cleanup=False)
    return hf


def test_doctests():
    assert doctest.testmod(W).failed == 0


def test_hf_course_example_merges():
    # The Hugging Face course's WordPiece example: the first merge is ('##g', '##s') with score
    # 5 / (20 * 5) = 1/20, although ('##u', '##g') is the most frequent pair (20 occurrences).
    counts = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
    merges = W.wordpiece_merges(counts, 3)
    assert merges[0] == ("##g", "##s")
    assert merges == W.naive_wordpiece_merges(counts, 3)


@pytest.mark.parametrize("min_frequency", [1, 3, 20])
def test_incremental_equals_naive(corpus, min_frequency):
    words = dict(random.Random(0).sample(sorted(Counter(bert_pretokenize(corpus[0][:60_000])).items()), 800))
    assert (W.wordpiece_merges(words, 250, min_frequency)
            == W.naive_wordpiece_merges(words, 250, min_frequency))


def test_min_frequency_keeps_rare_pairs_out():
    # ('q', '##z') has the best score (see below) but occurs twice: a floor of 3 skips it for ('b', '##y').
    text = "xy " * 3 + "xa " * 50 + "by " * 50 + "qz " * 2
    assert WordPieceTokenizer.train(text, vocab_size=8, min_frequency=3).merges == [("b", "##y")]
    with pytest.raises(ValueError, match="min_frequency"):
        WordPieceTokenizer.train(text, vocab_size=8, min_frequency=0)


def test_score_is_likelihood_not_frequency():
    # BPE would merge ('x', '##a') or ('b', '##y') (50 each); WordPiece merges ('q', '##z'):
    # 2 / (2 * 2) = 0.5 against 50 / (53 * 50) = 0.019.
    text = "xy " * 3 + "xa " * 50 + "by " * 50 + "qz " * 2
    tok = WordPieceTokenizer.train(text, vocab_size=8)  # [UNK] + 6 characters + 1 merge
    assert tok.merges == [("q", "##z")] and tok.vocab[-1] == "qz"


def test_vocab_size_and_layout(trained):
    assert trained.vocab_size == 1500 and trained.vocab[0] == UNK
    assert len(set(trained.vocab)) == trained.vocab_size
    for a, b in trained.merges:
        assert b.startswith(PREFIX) and W.merge_pieces(a, b) in trained.token_to_id


def test_encode_matches_hf_on_held_out_plays(trained, corpus):
    hf = hf_tokenizer(trained)
    val = corpus[1]
    for start in range(0, len(val), len(val) // 8):  # 8 slices across the 4 held-out plays
        chunk = val[start:start + 20_000]
        enc = hf.encode(chunk)
        assert trained.encode(chunk) == enc.ids
        assert trained.tokenize(chunk) == enc.tokens
    ids = trained.encode(val[:20_000])
    assert trained.decode(ids) == hf.decode(ids)
    assert UNK in trained.tokenize("Ægir zzyzx 日本")  # unseen characters become [UNK]


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("abcdefghij ABC,.'-\n\té日")), max_size=60))
def test_encode_matches_hf_random_text(text):
    vocab = [UNK, "a", "b", "ab", "abc", "c", "##a", "##b", "##c", "##bc", "##abc", "d", "##d", "e", ",", ".",
             "'", "A", "##B", "é", "##é", "日"]
    tok = WordPieceTokenizer(vocab, max_input_chars_per_word=8)
    hf = hf_tokenizer(tok)
    assert tok.encode(text) == hf.encode(text).ids
    assert bert_pretokenize(text) == [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)]


def test_greedy_longest_match_and_unk():
    vocab = {UNK, "un", "##aff", "##able", "##a", "##ff", "##ab", "##le", "u", "##n"}
    assert wordpiece_word("unaffable", vocab) == ["un", "##aff", "##able"]
    assert wordpiece_word("unx", vocab) == [UNK]  # the whole word, not just the bad character
    assert wordpiece_word("u" * 5, vocab, max_input_chars_per_word=4) == [UNK]


def test_save_load_roundtrip(trained, tmp_path):
    path = trained.save(tmp_path / "wp.json")
    again = WordPieceTokenizer.load(path)
    assert again.vocab == trained.vocab
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a saved WordPieceTokenizer"):
        WordPieceTokenizer.load(tmp_path / "bad.json")


def test_bad_input():
    with pytest.raises(ValueError, match="vocab_size=3 is too small"):
        WordPieceTokenizer.train("hello world", vocab_size=3)
    with pytest.raises(ValueError, match="no words"):
        WordPieceTokenizer.train("   \n ", vocab_size=100)
    with pytest.raises(ValueError, match=r"must include '\[UNK\]'"):
        WordPieceTokenizer.train("hello", vocab_size=100, special_tokens=("[PAD]",))
    with pytest.raises(ValueError, match="vocab_size must be an integer"):
        WordPieceTokenizer.train("hello", vocab_size=10.5)
    with pytest.raises(TypeError, match="text must be a str"):
        WordPieceTokenizer.train(b"hello", vocab_size=100)
    with pytest.raises(ValueError, match="unk_token"):
        WordPieceTokenizer(["a", "##b"])
    with pytest.raises(ValueError, match="twice"):
        WordPieceTokenizer([UNK, "a", "a"])
    with pytest.raises(ValueError, match="ids must be exactly"):
        WordPieceTokenizer({UNK: 0, "a": 2})
    with pytest.raises(TypeError, match="vocab must be"):
        WordPieceTokenizer([UNK, 3])
    with pytest.raises(ValueError, match="max_input_chars_per_word"):
        WordPieceTokenizer([UNK], max_input_chars_per_word=0)
    tok = WordPieceTokenizer([UNK, "a"])
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(None)
    with pytest.raises(ValueError, match="token id 7"):
        tok.decode([0, 7])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])
