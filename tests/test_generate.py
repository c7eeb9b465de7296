"""Tests for shared.generate: the KV-cached loop against recomputation, batching with left
padding, the sampling filters (statistically, with fixed seeds and stated tolerances),
stopping, the context-length rule, streaming, and greedy parity with Hugging Face."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shared.attention import KVCache
from shared.generate import (
    apply_temperature,
    find_eos_id,
    generate,
    generate_text,
    generate_tokens,
    left_pad,
    sample_next,
    stream,
    top_k_filter,
    top_p_filter,
)
from shared.model import GPTConfig, GPTModel

CTX = 16


def random_model(seed: int = 0, vocab_size: int = 97, context_length: int = CTX, n_layers: int = 2,
                 qkv_bias: bool = False) -> GPTModel:
    """A random GPT whose greedy output is not one repeated token: GPT-2's 0.02 init makes
    every logit nearly equal and the tied embedding then repeats the last token, so the
    matrices get std 0.3."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=32, n_heads=4,
                    n_layers=n_layers, qkv_bias=qkv_bias)
    model = GPTModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def model() -> GPTModel:
    return random_model()


def prompt(B: int = 2, T: int = 5, seed: int = 1, vocab_size: int = 97) -> torch.Tensor:
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def reference_greedy(model: GPTModel, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The documented rule written plainly: each step runs the model on the last
    context_length tokens and appends the argmax."""
    ctx = model.cfg.context_length
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx[:, -ctx:])[:, -1]
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


# ------------------------------------------------------------------- cache against recomputation

def test_greedy_is_not_degenerate(model):
    out = generate(model, prompt(), 10)
    assert all(len(set(row[5:].tolist())) >= 4 for row in out), "test model repeats one token"


def test_cached_equals_uncached_tokens_and_logits(model):
    idx = prompt(3, 4)
    steps_c = list(generate_tokens(model, idx, 10, use_cache=True))
    steps_u = list(generate_tokens(model, idx, 10, use_cache=False))
    assert len(steps_c) == len(steps_u) == 10
    for (tc, lc), (tu, lu) in zip(steps_c, steps_u):
        torch.testing.assert_close(lc, lu, atol=1e-5, rtol=1e-5)
        assert torch.equal(tc, tu)
    assert torch.equal(generate(model, idx, 10), generate(model, idx, 10, use_cache=False))


def test_cached_generation_matches_reference_loop(model):
    idx = prompt(2, 5)
    assert torch.equal(generate(model, idx, 8), reference_greedy(model, idx, 8))


def test_cache_is_used(model, monkeypatch):
    """With the cache, only the prefill sees more than one token."""
    seen = []
    orig = GPTModel.hidden_states

    def spy(self, idx, *a, **k):
        seen.append(idx.shape[1])
        return orig(self, idx, *a, **k)

    monkeypatch.setattr(GPTModel, "hidden_states", spy)
    generate(model, prompt(1, 6), 5)
    assert seen == [6, 1, 1, 1, 1]
    seen.clear()
    generate(model, prompt(1, 6), 3, use_cache=False)
    assert seen == [6, 7, 8]


# ------------------------------------------------------------------------------ context length

def test_past_context_slides_and_matches_recomputation(model):
    """Documented: past context_length the window slides (the cache is re-prefilled)."""
    idx = prompt(2, 5)
    n = 2 * CTX  # well past the context
    cached = generate(model, idx, n)
    assert cached.shape == (2, 5 + n)
    assert torch.equal(cached, generate(model, idx, n, use_cache=False))
    assert torch.equal(cached, reference_greedy(model, idx, n))


def test_long_prompt_is_cropped_from_the_left(model):
    long = prompt(1, 3 * CTX)
    out = generate(model, long, 6)
    assert out.shape == (1, 3 * CTX + 6)
    assert torch.equal(out[:, :3 * CTX], long), "the returned ids must start with the whole prompt"
    assert torch.equal(out[:, 3 * CTX:], generate(model, long[:, -CTX:], 6)[:, CTX:])


def test_context_length_one_slides():
    m = random_model(context_length=1)
    idx = prompt(1, 3)
    assert torch.equal(generate(m, idx, 5), reference_greedy(m, idx, 5))


# ----------------------------------------------------------------------------------- batching

@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_left_padding_equals_one_by_one(model, use_cache):
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    idx, mask = left_pad(prompts, pad_id=0)
    assert idx.shape == mask.shape == (3, 6)
    n = 25  # longer than the context: the sliding window must agree too
    out = generate(model, idx, n, attention_mask=mask, use_cache=use_cache)
    for b, p in enumerate(prompts):
        single = generate(model, torch.tensor([p]), n, use_cache=use_cache)
        assert torch.equal(out[b, 6:], single[0, len(p):]), f"row {b} differs from generating it alone"


def test_batched_logits_equal_one_by_one(model):
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    idx, mask = left_pad(prompts, pad_id=3)
    batched = [lg for _, lg in generate_tokens(model, idx, 6, attention_mask=mask.bool())]
    for b, p in enumerate(prompts):
        single = [lg for _, lg in generate_tokens(model, torch.tensor([p]), 6)]
        for lb, ls in zip(batched, single):
            torch.testing.assert_close(lb[b], ls[0], atol=1e-5, rtol=1e-5)


def test_left_pad_errors():
    with pytest.raises(ValueError, match="at least one prompt"):
        left_pad([])
    with pytest.raises(ValueError, match=">= 1 token"):
        left_pad([[1], []])


def test_right_padding_is_rejected(model):
    idx = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="left"):
        generate(model, idx, 2, attention_mask=mask)
    with pytest.raises(ValueError, match="shape"):
        generate(model, idx, 2, attention_mask=mask[:, :2])


# ----------------------------------------------------------------------------------- stopping

def test_eos_stops_each_row_and_pads_with_eos(model):
    idx = prompt(2, 5)
    free = generate(model, idx, 12)
    eos = int(free[0, 5 + 3])  # the 4th token of row 0 becomes "end of text"
    out = generate(model, idx, 12, eos_id=eos)
    first = (free[0, 5:] == eos).nonzero()[0].item()
    assert torch.all(out[0, 5 + first:] == eos), "row 0 must be padded with eos once finished"
    assert torch.equal(out[0, :5 + first + 1], free[0, :5 + first + 1])
    hits = (free[1, 5:] == eos).nonzero()
    end = hits[0].item() if len(hits) else out.size(1) - 5
    assert torch.equal(out[1, :5 + end], free[1, :5 + end])


def test_eos_stops_early_when_every_row_is_done(model):
    idx = prompt(1, 5)
    free = generate(model, idx, 12)
    eos = int(free[0, 5 + 2])
    first = (free[0, 5:] == eos).nonzero()[0].item()
    out = generate(model, idx, 12, eos_id=eos)
    assert out.shape == (1, 5 + first + 1), "generation must stop right after eos"
    assert int(out[0, -1]) == eos


def test_max_new_tokens_zero_returns_prompt(model):
    idx = prompt()
    assert torch.equal(generate(model, idx, 0), idx)


# ------------------------------------------------------------------------------ the filters

def test_apply_temperature():
    z = torch.tensor([[1.0, 2.0, 4.0]])
    torch.testing.assert_close(apply_temperature(z, 2.0), z / 2)
    p_cold = torch.softmax(apply_temperature(z, 0.1), -1)
    p_hot = torch.softmax(apply_temperature(z, 10.0), -1)
    assert p_cold[0, 2] > 0.99 and p_hot.max() - p_hot.min() < 0.3
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(z, 0.0)


def test_top_k_filter_keeps_exactly_the_k_largest():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 100, generator=g)
    for k in (1, 3, 17, 100, 500):
        out = top_k_filter(logits, k)
        kept = torch.isfinite(out)
        assert torch.all(kept.sum(-1) == min(k, 100))
        top = torch.topk(logits, min(k, 100), dim=-1).indices
        assert torch.all(kept.gather(-1, top))
        assert torch.equal(out[kept], logits[kept]), "kept logits must be unchanged"


def _nucleus_reference(probs: torch.Tensor, p: float) -> set[int]:
    """Smallest set of most likely tokens whose mass reaches p (float64, plain Python)."""
    order = torch.argsort(probs, descending=True).tolist()
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += float(probs[i])
        if mass >= p:
            break
    return kept


def test_top_p_filter_on_a_worked_example():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(top_p_filter(logits, p)).nonzero()[:, 0].tolist())
    assert kept(0.3) == {1}  # the top token alone reaches 0.3
    assert kept(0.6) == {1, 3}  # 0.5 < 0.6: the token that crosses p (0.3) is kept
    assert kept(0.85) == {1, 3, 2}
    assert kept(0.97) == {0, 1, 2, 3}
    assert kept(1.0) == {0, 1, 2, 3}


def test_top_p_filter_keeps_the_smallest_set_reaching_p():
    g = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(200):
        logits = torch.randn(50, generator=g) * 2.0
        p = float(torch.rand((), generator=g)) * 0.98 + 0.01
        probs = torch.softmax(logits.double(), -1)
        cums = torch.sort(probs, descending=True).values.cumsum(0)
        if (cums - p).abs().min() < 1e-5:  # too close to a boundary for float32: skip
            continue
        want = _nucleus_reference(probs, p)
        got = set(torch.isfinite(top_p_filter(logits[None], p)[0]).nonzero()[:, 0].tolist())
        assert got == want, f"p={p}: kept {sorted(got)}, expected {sorted(want)}"
        checked += 1
    assert checked > 150


def test_top_k_sampling_never_leaves_the_top_k_and_matches_renormalised_probs():
    """20,000 draws; tolerance 0.02 on each frequency (> 5 standard errors of 0.0035)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 40, generator=g) * 1.5
    k, n = 5, 20_000
    draws = sample_next(logits.expand(n, -1), temperature=1.0, top_k=k, generator=g)
    top = set(torch.topk(logits[0], k).indices.tolist())
    assert set(draws.tolist()) <= top, "sampled a token outside the k most likely"
    freq = torch.bincount(draws, minlength=40).double() / n
    want = torch.zeros(40, dtype=torch.float64)
    idx = torch.tensor(sorted(top))
    want[idx] = torch.softmax(logits[0, idx].double(), -1)
    assert (freq - want).abs().max() < 0.02


def test_top_p_sampling_frequencies_match_the_renormalised_nucleus():
    """20,000 draws: nothing outside the nucleus; each frequency within 0.02 of its
    renormalised probability, and a chi-square statistic below the 0.1% critical value."""
    probs = torch.tensor([0.35, 0.25, 0.15, 0.1, 0.06, 0.04, 0.03, 0.02])
    logits = probs.log()[None]
    p, n = 0.8, 20_000  # nucleus: 0.35 + 0.25 + 0.15 = 0.75 < 0.8, + 0.1 -> 0.85 reaches it
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1), temperature=1.0, top_p=p, generator=g)
    assert set(draws.tolist()) <= {0, 1, 2, 3}
    counts = torch.bincount(draws, minlength=8).double()
    want = torch.zeros(8, dtype=torch.float64)
    want[:4] = probs[:4].double() / probs[:4].sum()
    assert (counts / n - want).abs().max() < 0.02
    chi2 = float(((counts[:4] - n * want[:4]) ** 2 / (n * want[:4])).sum())
    assert chi2 < 16.27, f"chi-square {chi2:.1f} exceeds the 0.1% critical value for 3 dof"


def test_filters_apply_in_order_temperature_topk_topp():
    """top-p after top-k measures the nucleus on the renormalised top-k distribution."""
    probs = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    logits = probs.log()[None]
    g = torch.Generator().manual_seed(2)
    draws = sample_next(logits.expand(5000, -1), temperature=1.0, top_k=2, top_p=0.5, generator=g)
    # top-2 renormalised: 0.6, 0.4 -> p=0.5 keeps only token 0. (top-p first would keep 0 and 1.)
    assert set(draws.tolist()) == {0}
    # temperature before top-p: T=10 flattens, so the nucleus at p=0.5 grows past two tokens.
    draws = sample_next(logits.expand(5000, -1), temperature=10.0, top_p=0.5, generator=g)
    assert len(set(draws.tolist())) > 2


def test_top_k_one_equals_greedy(model):
    idx = prompt(2, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, idx, 12, temperature=1.7, top_k=1, generator=g), generate(model, idx, 12))
    logits = torch.randn(8, 50, generator=g)
    assert torch.equal(sample_next(logits, 2.0, top_k=1, generator=g), logits.argmax(-1))


def test_tiny_top_p_equals_greedy(model):
    idx = prompt(2, 5)
    assert torch.equal(generate(model, idx, 8, temperature=1.0, top_p=1e-6), generate(model, idx, 8))


def test_seeded_generator_is_reproducible(model):
    idx = prompt(2, 5)
    run = lambda seed: generate(model, idx, 20, temperature=1.0, top_k=20, top_p=0.95,
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(123), run(123))
    assert not torch.equal(run(123), run(124))
    cached = generate(model, idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(7))
    uncached = generate(model, idx, 20, temperature=1.0, use_cache=False,
                        generator=torch.Generator().manual_seed(7))
    assert torch.equal(cached, uncached)


# ------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_invalid_arguments_raise(model, kwargs, match):
    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(model, prompt(), **args)


def test_invalid_idx_raises(model):
    with pytest.raises(ValueError, match=r"idx\[None\]"):
        generate(model, torch.tensor([1, 2, 3]), 2)
    with pytest.raises(ValueError, match="T >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="long"):
        generate(model, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(torch.zeros(3), 0)


def test_mode_and_grad_are_restored(model):
    model.train()
    it = generate_tokens(model, prompt(), 3)
    next(it)
    assert torch.is_grad_enabled(), "no_grad must not leak out of the generator"
    list(it)
    assert model.training, "generate must restore training mode"
    model.eval()


# --------------------------------------------------------------------------- text and streaming

class ByteTokenizer:
    """Ids 0..255 are bytes, 256 is <|endoftext|>: every multi-byte character spans tokens."""

    vocab_size = 257

    def encode(self, text, allowed_special=frozenset()):
        if text == "<|endoftext|>" and allowed_special:
            return [256]
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids):
        return b"".join(b"<|endoftext|>" if i == 256 else bytes([i]) for i in ids)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class DecodeOnly(ByteTokenizer):
    """The same tokenizer without decode_bytes: stream falls back to holding back U+FFFD."""

    def __getattribute__(self, name):
        if name == "decode_bytes":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def decode(self, ids):
        return ByteTokenizer.decode_bytes(self, ids).decode("utf-8", errors="replace")


class Scripted(nn.Module):
    """A fake GPT that emits a fixed script of token ids after any prompt."""

    def __init__(self, script: list[int], prompt_len: int, vocab_size: int = 257):
        super().__init__()
        self.cfg = GPTConfig(vocab_size=vocab_size, context_length=256, d_model=4, n_heads=1, n_layers=1)
        self.script, self.prompt_len = script, prompt_len
        self.dummy = nn.Parameter(torch.zeros(1))

    def new_kv_cache(self):
        return KVCache(1, self.cfg.context_length)

    def forward(self, idx, attention_mask=None, position_ids=None, kv_cache=None):
        T = idx.size(1) + (kv_cache.length if kv_cache is not None else 0)
        if kv_cache is not None:
            kv_cache.length += idx.size(1)
        logits = torch.zeros(idx.size(0), idx.size(1), self.cfg.vocab_size)
        step = T - self.prompt_len
        logits[:, -1, self.script[step] if step < len(self.script) else 256] = 10.0
        return logits


TEXT = "héllo wörld 👋 — ça va? STOP never"


@pytest.mark.parametrize("tok", [ByteTokenizer(), DecodeOnly()])
@pytest.mark.parametrize("use_cache", [True, False])
def test_stream_yields_whole_characters_and_joins_to_generate_text(tok, use_cache):
    script = list(TEXT.encode("utf-8"))
    m = Scripted(script, prompt_len=2)
    pieces = list(stream(m, tok, "hi", max_new_tokens=200, use_cache=use_cache))
    assert "".join(pieces) == TEXT == generate_text(m, tok, "hi", max_new_tokens=200, use_cache=use_cache)
    assert len(pieces) > 10, "stream must yield as tokens arrive, not all at the end"
    assert not any("\ufffd" in p for p in pieces), "a piece holds half a UTF-8 character"


@pytest.mark.parametrize("tok", [ByteTokenizer(), DecodeOnly()])
def test_stop_sequences(tok):
    m = Scripted(list(TEXT.encode("utf-8")), prompt_len=2)
    want = TEXT[:TEXT.index(" STOP")]
    assert generate_text(m, tok, "hi", 200, stop=[" STOP", "zzz"]) == want
    pieces = list(stream(m, tok, "hi", 200, stop=" STOP"))
    assert "".join(pieces) == want
    assert not any("ST" in p for p in pieces)
    assert generate_text(m, tok, "hi", 200, stop="ça") == "héllo wörld 👋 — "


def test_text_helpers_stop_at_eos_and_max_tokens():
    tok = ByteTokenizer()
    script = list(b"abc") + [256] + list(b"def")
    m = Scripted(script, prompt_len=2)
    assert find_eos_id(tok) == 256
    assert generate_text(m, tok, "hi", 50) == "abc"
    assert "".join(stream(m, tok, "hi", 50)) == "abc"
    assert generate_text(m, tok, "hi", 50, eos_id=None).startswith("abc<|endoftext|>def")
    assert generate_text(m, tok, "hi", 2) == "ab"
    m_empty = Scripted(list(b"xyz"), prompt_len=1)
    assert generate_text(m_empty, tok, "", 3) == "xyz", "an empty prompt starts from <|endoftext|>"
    with pytest.raises(ValueError, match="stop"):
        generate_text(m, tok, "hi", 5, stop="")


def test_stream_on_a_random_model_equals_generate_text():
    """Random byte ids include invalid UTF-8: the joined stream must still equal the text."""
    tok = ByteTokenizer()
    m = random_model(vocab_size=257, context_length=32)
    for seed in range(3):
        kw = dict(max_new_tokens=40, temperature=1.0, top_k=100)
        a = "".join(stream(m, tok, "Once", generator=torch.Generator().manual_seed(seed), **kw))
        b = generate_text(m, tok, "Once", generator=torch.Generator().manual_seed(seed), **kw)
        assert a == b


def test_stream_does_not_leak_no_grad():
    m = Scripted(list(b"abcdef"), prompt_len=2)
    it = stream(m, ByteTokenizer(), "hi", 10)
    next(it)
    assert torch.is_grad_enabled()
    list(it)


# ---------------------------------------------------------------------- Hugging Face parity

def _hf_pair(tmp_path, n_layer=2):
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only oracle")
    weights = pytest.importorskip("shared.weights", reason="shared.weights (Chapter 4) is not there yet")
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=CTX, n_embd=32, n_layer=n_layer, n_head=4,
                                  initializer_range=0.3, bos_token_id=100, eos_token_id=100)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.generation_config.pad_token_id = 0
    hf.generation_config.eos_token_id = None
    hf.save_pretrained(tmp_path)
    return hf, weights.load_gpt2(tmp_path)


def test_greedy_tokens_equal_hugging_face_generate(tmp_path):
    hf, ours = _hf_pair(tmp_path)
    idx = prompt(2, 4, vocab_size=101)
    with torch.no_grad():
        want = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=10, do_sample=False)
    got = generate(ours, idx, 10)
    assert len(set(got[0, 4:].tolist())) > 2, "degenerate test model"
    assert torch.equal(got, want)


def test_batched_left_padding_equals_hugging_face(tmp_path):
    hf, ours = _hf_pair(tmp_path)
    idx, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], pad_id=0)
    with torch.no_grad():
        want = hf.generate(idx, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(generate(ours, idx, 8, attention_mask=mask), want)


def test_probability_helpers_are_consistent():
    """softmax(top_p_filter) renormalises: the kept probabilities sum to one, in proportion."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    kept = torch.softmax(top_p_filter(logits, 0.7), -1)
    full = torch.softmax(logits, -1)
    mask = kept > 0
    assert math.isclose(float(kept.sum()), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(kept[mask], full[mask] / full[mask].sum())


def test_a_tiny_temperature_samples_the_argmax_instead_of_crashing():
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 5
    g = torch.Generator().manual_seed(0)
    for t in (1e-45, 1e-30, 1e-8):
        assert torch.equal(sample_next(logits, temperature=t, generator=g), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_row_with_nothing_to_sample_is_a_clear_error(temperature):
    logits = torch.zeros(2, 5)
    logits[1] = float("-inf")
    with pytest.raises(ValueError, match="row 1 .*no finite value"):
        sample_next(logits, temperature=temperature)
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="row 1 holds a NaN"):
        sample_next(logits, temperature=temperature)


def test_batched_sampling_is_not_promised_to_equal_sampling_alone(model):
    """Left padding gives every row its solo *distributions*; a sampled batch shares one random
    stream, so its tokens differ from solo runs with the same seed. The docstring says so."""
    doc = " ".join(generate.__doc__.split())
    assert "Greedy decoding therefore gives each row the tokens it gets alone" in doc
    assert "the same tokens as when generated alone" not in doc
    prompts = [[5, 6, 7], [8, 9]]
    idx, mask = left_pad(prompts)
    batched = generate(model, idx, 8, temperature=1.0, attention_mask=mask,
                       generator=torch.Generator().manual_seed(0))
    alone = generate(model, torch.tensor([prompts[1]]), 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(batched[1, -8:], alone[0, -8:])  # row 1 draws after row 0 in each step


def test_find_eos_id_prefers_the_tokenizers_declared_end_token():
    """A GGUF chat model ends its turn with <|im_end|> (its declared eos_id), not <|endoftext|>."""
    class ChatTok(ByteTokenizer):
        eos_id = 7

    assert find_eos_id(ChatTok()) == 7
    assert find_eos_id(ByteTokenizer()) == 256


def test_find_eos_id_on_smollm2_is_im_end():
    from shared.gguf_io import GGUFTokenizer
    from shared.llama import smollm2_path

    tok = GGUFTokenizer.from_gguf(smollm2_path())
    eos = find_eos_id(tok)
    assert tok.decode([eos]) == "<|im_end|>", "a chat model must stop at its end-of-turn token"
