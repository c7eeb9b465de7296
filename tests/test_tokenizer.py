"""Tests for shared.tokenizer: round-trips, exact GPT-2 ids (tiktoken as the oracle), training.

Everything is offline: tiktoken's GPT-2 encoding is built from the vendored ranks file.
"""

import doctest
import hashlib
import inspect
import json
import random

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.tokenizer as T
from shared.tokenizer import ENDOFTEXT, BPETokenizer, gpt2_encoding

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TRAIN_TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?
def encode(self, text: str) -> list[int]:
    return [ord(c) for c in text]   # 42 items, 3.14 ms
Ünïcödé: naïve café — 日本語のテキスト, emoji 👋🏽🚀, Ελληνικά, العربية.
""" * 3

# A varied sample: prose, code, numbers, contractions, whitespace runs, emoji, scripts.
SAMPLES = [
    "", " ", "  ", "\n", "\n\n\n", " \t \n  x", "a  ", "trailing spaces   ", "   leading",
    "Hello world", "hello world", "I'll've they're we'd it's", "don't DON'T 'S's",
    "3.14159 + 2,718 = 42; 1e-9 0x1F 1234567890", "café naïve résumé Ünïcödé",
    "日本語のテキストです。中文文本。한국어 텍스트", "Ελληνικά и русский текст", "العربية עברית",
    "emoji 👋🏽 👨‍👩‍👧‍👦 🚀🔥 flags 🇫🇷🇯🇵", "def f(x):\n    return x**2  # square\n\n\tpass\r\n",
    "<html><body class=\"main\">&amp; &lt;</body></html>", "    \n    \n\n  \t\t  end",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n", "ＦｕｌｌＷｉｄｔｈ ① ² ½ Ⅻ",
    "\u200b zero\u200dwidth \u00a0nbsp \u3000ideographic", "a" * 300, " ".join(["the"] * 50),
    "mixed123abc!!!???...---", "\x00\x01\x7f control", "<|endoftext|> is not special here",
]


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer.train(TRAIN_TEXT, vocab_size=256 + 120 + 1)


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer.from_gpt2()


# ------------------------------------------------------------------------- vendored GPT-2 ranks
def test_vendored_ranks_checksum():
    raw = T.GPT2_RANKS_PATH.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == T.GPT2_RANKS_SHA256
    # the same file as tiktoken's r50k_base (GPT-2's ranks): tiktoken pins this hash itself
    assert T.GPT2_RANKS_SHA256 in inspect.getsource(openai_public)
    ranks = T.load_gpt2_ranks()
    assert len(ranks) == 50256 and sorted(ranks.values()) == list(range(50256))
    assert (T.GPT2_RANKS_PATH.parent / "LICENSE-gpt2-tiktoken.txt").read_text().count(T.GPT2_RANKS_SHA256) == 1


def test_corrupted_ranks_file_is_rejected(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(T.GPT2_RANKS_PATH.read_bytes().replace(b"IQ== 0", b"IQ== 1", 1))
    with pytest.raises(ValueError, match="SHA-256"):
        T.load_gpt2_ranks(bad)


def test_gpt2_encoding_equals_tiktokens_own_construction(monkeypatch):
    """Build tiktoken's "gpt2" exactly as tiktoken does, with the download replaced by our file."""
    monkeypatch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", lambda **kw: T.load_gpt2_ranks())
    theirs = tiktoken.Encoding(**openai_public.gpt2())
    ours = gpt2_encoding()
    assert ours.name == theirs.name == "gpt2"
    assert ours._pat_str == theirs._pat_str == T.GPT2_PATTERN
    assert ours._special_tokens == theirs._special_tokens == {ENDOFTEXT: 50256}
    assert ours._mergeable_ranks == theirs._mergeable_ranks
    assert ours.n_vocab == theirs.n_vocab == 50257
    assert ours.encode("hello world") == [31373, 995]  # from tiktoken's own docstring
    for text in SAMPLES:
        assert ours.encode(text, disallowed_special=()) == theirs.encode(text, disallowed_special=())


# ------------------------------------------------------------------------------ GPT-2 exactness
def test_from_gpt2_matches_tiktoken_on_sample(gpt2):
    enc = gpt2_encoding()
    assert gpt2.vocab_size == enc.n_vocab == 50257
    for text in SAMPLES:
        assert gpt2.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=()), text
        assert gpt2.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all"), text
        assert gpt2.decode(enc.encode(text, disallowed_special=())) == text


def test_from_gpt2_matches_tiktoken_on_long_text_and_token_soup(gpt2):
    enc = gpt2_encoding()
    text = TRAIN_TEXT * 5 + "\n".join(SAMPLES[:-1]) * 5  # (01_tokenization.ipynb checks the val plays)
    assert gpt2.encode(text) == enc.encode(text)
    rng = random.Random(0)
    for _ in range(50):  # decoded random GPT-2 tokens: odd byte sequences and boundaries
        soup = enc.decode([rng.randrange(50256) for _ in range(40)])
        assert gpt2.encode_ordinary(soup) == enc.encode_ordinary(soup), soup


@SETTINGS
@given(st.text())
def test_from_gpt2_matches_tiktoken_hypothesis(gpt2, text):
    enc = gpt2_encoding()
    assert gpt2.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())


@SETTINGS
@given(st.lists(st.one_of(st.text(), st.sampled_from([ENDOFTEXT, " ", "\n\n", "  \t", "👋🏽", "def x():"]))))
def test_from_gpt2_matches_tiktoken_with_specials(gpt2, parts):
    text = "".join(parts)
    enc = gpt2_encoding()
    assert gpt2.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text


def test_gpt2_tokens_encode_to_themselves(gpt2):
    """A chunk that is a whole token encodes to it; the fast path relies on this (as tiktoken does)."""
    rng = random.Random(1)
    for i in rng.sample(range(256, 50256), 3000):
        data = gpt2.vocab[i]
        assert T.encode_chunk([gpt2.byte_ids[b] for b in data], gpt2.merges) == [i]


# ------------------------------------------------------------------------------------ round-trips
@SETTINGS
@given(st.text())
def test_roundtrip_arbitrary_unicode(trained, text):
    assert trained.decode(trained.encode(text, disallowed_special=())) == text


@SETTINGS
@given(st.lists(st.one_of(st.text(), st.sampled_from([ENDOFTEXT, "    ", "\n\n\n", "\t\t", "🚀👨‍👩‍👧",
                                                        "return x**2  # sq", "naïve"]))))
def test_roundtrip_with_special_tokens(trained, parts):
    text = "".join(parts)
    ids = trained.encode(text, allowed_special="all")
    assert trained.decode(ids) == text
    assert ids.count(trained.special_tokens[ENDOFTEXT]) == text.count(ENDOFTEXT)


def test_roundtrip_sample(trained):
    for text in SAMPLES:
        assert trained.decode(trained.encode(text, disallowed_special=())) == text
    assert all(0 <= i < trained.vocab_size for i in trained.encode(" ".join(SAMPLES), disallowed_special=()))


# --------------------------------------------------------------------------------------- training
def test_hand_checked_example():
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=256 + 4, special_tokens=())
    # counts: aa=4 -> 256; then (97,98)=2 ties (256,97)=2, the smaller pair wins -> 257;
    # then (256,257)=2 -> 258; then all pairs count 1, the smallest is (97,99) -> 259
    assert tok.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258, (97, 99): 259}
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 259]
    assert tok.decode([258]) == "aaab" and tok.vocab_size == 260


def test_merges_never_cross_pretokens():
    tok = BPETokenizer.train("ab ab ab ab", vocab_size=256 + 2, special_tokens=())
    assert all(b" " not in tok.vocab[i][1:] for i in tok.merges.values())  # space only leads


def test_naive_and_incremental_agree():
    rng = random.Random(0)
    words = TRAIN_TEXT.split()
    text = TRAIN_TEXT + " ".join(rng.choice(words) for _ in range(600))
    fast = BPETokenizer.train(text, vocab_size=256 + 100)
    slow = BPETokenizer.train(text, vocab_size=256 + 100, naive=True)
    assert fast.merges == slow.merges and len(fast.merges) == 99
    assert fast.encode(text) == slow.encode(text)


def test_training_is_deterministic(trained):
    again = BPETokenizer.train(TRAIN_TEXT, vocab_size=trained.vocab_size)
    assert again.merges == trained.merges
    assert again.encode(TRAIN_TEXT) == trained.encode(TRAIN_TEXT)


def test_trained_tokens_encode_to_themselves(trained):
    for i in trained.merges.values():
        assert T.encode_chunk(list(trained.vocab[i]), trained.merges) == [i]


def test_special_tokens_get_last_ids_and_are_not_learned():
    text = ("hello world" + ENDOFTEXT) * 30
    tok = BPETokenizer.train(text, vocab_size=265, special_tokens=(ENDOFTEXT, "<|pad|>"))
    assert tok.special_tokens == {ENDOFTEXT: 263, "<|pad|>": 264} and tok.vocab_size == 265
    assert all(b"<|" not in tok.vocab[i] for i in tok.merges.values())
    assert tok.encode("hi<|pad|>", allowed_special={"<|pad|>"})[-1] == 264


def test_runs_out_of_pairs_warns():
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = BPETokenizer.train("abc", vocab_size=1000, special_tokens=())
    assert tok.vocab_size == 258


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("vocab_size,specials", [(0, ()), (255, ()), (100, (ENDOFTEXT,)), (256, (ENDOFTEXT,))])
def test_vocab_size_too_small(vocab_size, specials):
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("some text", vocab_size=vocab_size, special_tokens=specials)


def test_disallowed_special_token_raises(trained, gpt2):
    for tok in (trained, gpt2):
        with pytest.raises(ValueError, match="disallowed special token"):
            tok.encode("hello <|endoftext|> world")
        with pytest.raises(ValueError, match="allowed_special"):
            tok.encode("<|endoftext|>", allowed_special=set(), disallowed_special={ENDOFTEXT})
        # tiktoken's escape hatches
        assert tok.encode(ENDOFTEXT, allowed_special={ENDOFTEXT}) == [tok.special_tokens[ENDOFTEXT]]
        assert len(tok.encode(ENDOFTEXT, disallowed_special=())) > 1
    with pytest.raises(ValueError):
        gpt2_encoding().encode("hello <|endoftext|> world")  # the oracle agrees
    with pytest.raises(ValueError, match="not the string"):
        trained.encode("x", allowed_special=ENDOFTEXT)  # a bare string, not a set


def test_bad_ids_and_bad_merges():
    tok = BPETokenizer.train("abab", vocab_size=257, special_tokens=())
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([257])
    with pytest.raises(ValueError, match="256 \\+ k"):
        BPETokenizer({(97, 98): 300})
    with pytest.raises(ValueError, match="does not exist"):
        BPETokenizer({(97, 999): 256})
    with pytest.raises(ValueError, match="permutation"):
        BPETokenizer({}, byte_ids=[0] * 256)


# -------------------------------------------------------------------------------------- save/load
def test_save_load_roundtrip(tmp_path, trained, gpt2):
    for name, tok in (("trained.json", trained), ("gpt2.json", gpt2)):
        path = tok.save(tmp_path / name)
        data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, no pickle
        assert data["format"].startswith("shared.tokenizer")
        back = BPETokenizer.load(path)
        assert back.merges == tok.merges and back.special_tokens == tok.special_tokens
        assert back.byte_ids == tok.byte_ids and back.vocab == tok.vocab and back.pattern == tok.pattern
        text = " ".join(SAMPLES) + ENDOFTEXT
        assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a saved BPETokenizer"):
        BPETokenizer.load(p)


def test_docstring_examples():
    failures, tried = doctest.testmod(T, verbose=False)
    assert tried > 10 and failures == 0
