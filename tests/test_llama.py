"""Tests for shared.llama and shared.gguf_io: the Llama decoder against Hugging Face's
``LlamaForCausalLM`` (logits to 1e-5), the Hugging Face and GGUF loaders, the course's
dequantisation against ``gguf.quants.dequantize`` (bit for bit), the SmolLM2 tokenizer and chat
template against Hugging Face's, greedy decoding of SmolLM2 against Hugging Face's, the KV
cache and left padding, and the errors for bad input. Offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from shared.generate import generate, left_pad  # noqa: E402
from shared.gguf_io import GGUFTokenizer, bytes_to_unicode, dequantize, load_gguf, unpermute_qk  # noqa: E402
from shared.llama import (  # noqa: E402
    LlamaConfig,
    LlamaModel,
    chat_prompt,
    load_hf_llama,
    save_hf_llama,
    smollm2_path,
)

Q = gguf.GGMLQuantizationType


def tiny_cfg(**kw) -> LlamaConfig:
    base = dict(vocab_size=101, context_length=32, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                d_ff=96, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=False)
    return LlamaConfig(**{**base, **kw})


def random_llama(cfg: LlamaConfig, seed: int = 0) -> LlamaModel:
    """Random weights with std 0.3 (and norm gains around 1), so logits are far from uniform
    and a wrong layout cannot hide behind near-zero activations."""
    torch.manual_seed(seed)
    model = LlamaModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    return model


def hf_llama(model: LlamaModel, tmp_path):
    save_hf_llama(model, tmp_path / "hf")
    return transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()


# ---------------------------------------------------------------------------- the architecture

@pytest.mark.parametrize("n_heads,n_kv_heads,tie", [(4, 4, False), (4, 2, True), (4, 1, False), (4, 2, False)])
def test_logits_match_hf_llama(tmp_path, n_heads, n_kv_heads, tie):
    model = random_llama(tiny_cfg(n_heads=n_heads, n_kv_heads=n_kv_heads, tie_embeddings=tie))
    hf = hf_llama(model, tmp_path)
    idx = torch.randint(0, 101, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    assert ours.shape == (3, 20, 101)
    assert ours.std() > 1.0  # far from uniform: the comparison has teeth
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_qk_norm_matches_hf_qwen3():
    """QK-norm (per-head RMSNorm before RoPE) is what Qwen 3 adds to the Llama block."""
    cfg = tiny_cfg(qk_norm=True, tie_embeddings=True)
    model = random_llama(cfg)
    hf_cfg = transformers.Qwen3Config(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=32, rope_theta=10000.0, rms_norm_eps=1e-6,
                                      tie_word_embeddings=True, attention_bias=False)
    hf = transformers.Qwen3ForCausalLM(hf_cfg).eval()
    from shared.llama import _hf_name
    sd = {_hf_name(k): v for k, v in model.state_dict().items()}
    missing, _ = hf.load_state_dict(sd, strict=False)
    assert set(missing) <= {"lm_head.weight"}
    idx = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_both_ways(tmp_path):
    model = random_llama(tiny_cfg())
    back = load_hf_llama(save_hf_llama(model, tmp_path / "a"))
    assert back.cfg == model.cfg
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # A checkpoint written by Hugging Face itself (tied: no lm_head tensor in the file).
    hf_cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      rms_norm_eps=1e-6, tie_word_embeddings=True)
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "b")
    ours = load_hf_llama(tmp_path / "b")
    assert ours.cfg.tie_embeddings and ours.lm_head.weight is ours.tok_emb.weight
    idx = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="overwrite"):
        save_hf_llama(model, tmp_path / "a")


def test_kv_cache_decoding_equals_full_recomputation():
    model = random_llama(tiny_cfg())
    idx = torch.randint(0, 101, (2, 14), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_kv_cache()
        parts = [model(idx[:, :6], kv_cache=cache)]  # prefill 6, then one token at a time
        parts += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(6, 14)]
    assert cache.length == 14
    # logits have std ~5 here, so 1e-4 is float32 summation-order noise
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    # generate() with and without the cache gives the same tokens
    a = generate(model, idx[:, :5], 10, use_cache=True)
    b = generate(model, idx[:, :5], 10, use_cache=False)
    assert torch.equal(a, b)


def test_growing_cache_keeps_contents():
    model = random_llama(tiny_cfg(context_length=600))
    cache = model.new_kv_cache()
    cache.chunk = 4  # grow often
    idx = torch.randint(0, 101, (1, 30), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        steps = [model(idx[:, t:t + 1], kv_cache=cache) for t in range(30)]
        torch.testing.assert_close(torch.cat(steps, 1), model(idx), atol=1e-4, rtol=1e-4)
    assert cache.k.size(3) < 600


def test_left_padded_batch_equals_one_by_one():
    model = random_llama(tiny_cfg())
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    idx, mask = left_pad(prompts, pad_id=0)
    batched = generate(model, idx, 8, attention_mask=mask)
    for b, p in enumerate(prompts):
        alone = generate(model, torch.tensor([p]), 8)
        assert batched[b, -8:].tolist() == alone[0, -8:].tolist(), f"row {b}"
    # and the padded logits equal the unpadded ones (positions count from the first real token)
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = model(idx, attention_mask=mask, position_ids=pos)
        torch.testing.assert_close(padded[1, -2:], model(torch.tensor([prompts[1]]))[0], atol=1e-4, rtol=1e-4)


def test_config_and_forward_reject_bad_input():
    with pytest.raises(ValueError, match="n_kv_heads"):
        tiny_cfg(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_model"):
        tiny_cfg(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="even"):
        tiny_cfg(d_model=12, n_heads=4, n_kv_heads=4)
    with pytest.raises(ValueError, match="rope_theta"):
        tiny_cfg(rope_theta=0)
    with pytest.raises(ValueError, match="tie_embeddings"):
        tiny_cfg(tie_embeddings=1)
    with pytest.raises(TypeError, match="LlamaConfig"):
        LlamaModel({"d_model": 64})
    model = LlamaModel(tiny_cfg())
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.zeros(1, 3, dtype=torch.long), position_ids=torch.arange(4))
    with pytest.raises(ValueError, match="messages"):
        chat_prompt([])
    with pytest.raises(ValueError, match="content"):
        chat_prompt([{"role": "user"}])


# ------------------------------------------------------------------------------ dequantisation

@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "F16"])
def test_dequantize_matches_gguf_bit_for_bit(qtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, 96)) * rng.uniform(0.01, 3, (48, 1))).astype(np.float32)
    raw = gguf.quants.quantize(x, Q[qtype])
    ours = dequantize(raw, qtype, (48, 96)).numpy()
    theirs = gguf.quants.dequantize(raw, Q[qtype]).reshape(48, 96)
    assert np.array_equal(ours, theirs)
    assert np.abs(ours - x).max() < np.abs(x).max() * 0.2  # and it is an approximation of x


def test_dequantize_rejects_bad_input():
    with pytest.raises(ValueError, match="Q5_0"):
        dequantize(np.zeros(22, np.uint8), "Q5_0", (32,))
    with pytest.raises(ValueError, match="bytes"):
        dequantize(np.zeros(33, np.uint8), "Q8_0", (32,))
    with pytest.raises(ValueError, match="blocks"):
        dequantize(np.zeros(34, np.uint8), "Q8_0", (31,))


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's ``convert_hf_to_gguf.py`` permutation, written out as it is there."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(48, 3)
    assert np.array_equal(unpermute_qk(torch.from_numpy(permute(w, 3)), 3).numpy(), w)
    assert not np.array_equal(permute(w, 3), w)


# ------------------------------------------------------------------------- a tiny GGUF of our own

def tiny_vocab():
    """Specials first, then the 256 byte tokens, then a few merges (SmolLM2's layout)."""
    b2u = bytes_to_unicode()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n"]
    tokens = specials + [b2u[b] for b in range(256)] + [m.replace(" ", "") for m in merges]
    types = [3] * 3 + [1] * (len(tokens) - 3)
    return tokens, types, merges


def write_tiny_gguf(path, model: LlamaModel, arch="llama", qtypes=None):
    cfg = model.cfg
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    tokens, types, merges = tiny_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(2)
    w.add_bos_token_id(1)
    from shared.gguf_io import _gguf_name
    qtypes = qtypes or {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and cfg.tie_embeddings:
            continue
        a = v.numpy().astype(np.float32)
        if k.endswith("q_proj.weight"):
            a = permute(a, cfg.n_heads)
        elif k.endswith("k_proj.weight"):
            a = permute(a, cfg.n_kv_heads)
        qt = qtypes.get(k.split(".")[-2], "F32")
        if qt == "F32":
            w.add_tensor(_gguf_name(k), a)
        else:
            w.add_tensor(_gguf_name(k), gguf.quants.quantize(a, Q[qt]), raw_dtype=Q[qt])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_load_tiny_gguf_round_trip(tmp_path):
    model = random_llama(tiny_cfg(vocab_size=263, tie_embeddings=True))
    path = write_tiny_gguf(tmp_path / "tiny.gguf", model)
    back, tok = load_gguf(path)
    import dataclasses
    assert back.cfg.norm_eps == pytest.approx(model.cfg.norm_eps, rel=1e-6)  # GGUF stores float32
    assert dataclasses.replace(back.cfg, norm_eps=model.cfg.norm_eps) == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k  # F32: exact, Q/K permutation undone
    # quantised: the loaded weights equal gguf's dequantisation of what was written
    path2 = write_tiny_gguf(tmp_path / "q.gguf", model, qtypes={"q_proj": "Q4_1", "up": "Q8_0", "tok_emb": "Q8_0"})
    back2, _ = load_gguf(path2)
    raw = gguf.quants.quantize(model.blocks[0].mlp.up.weight.detach().numpy(), Q.Q8_0)
    expect = gguf.quants.dequantize(raw, Q.Q8_0).reshape(model.blocks[0].mlp.up.weight.shape)
    assert np.array_equal(back2.blocks[0].mlp.up.weight.detach().numpy(), expect)
    # the tokenizer: ids follow the GGUF's numbering (bytes after the specials, merges after bytes)
    ids = tok.encode("<|im_start|>the thin<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids) == "<|im_start|>the thin<|im_end|>"
    assert tokens_of(tok, " the") == [261]  # "Ġt he" is merge #2 -> id 3 + 256 + 2


def tokens_of(tok, text):
    return tok.encode(text)


def test_load_gguf_errors_name_the_problem(tmp_path):
    model = random_llama(tiny_cfg(vocab_size=263, tie_embeddings=True))
    good = write_tiny_gguf(tmp_path / "good.gguf", model)
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF"):
        load_gguf(tmp_path / "not.gguf")
    data = good.read_bytes()
    for cut in (len(data) - 100, 200):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            load_gguf(tmp_path / "cut.gguf")
    with pytest.raises(ValueError, match="architecture is 'gpt2'"):
        load_gguf(write_tiny_gguf(tmp_path / "gpt2.gguf", model, arch="gpt2"))
    with pytest.raises(ValueError, match="Q5_0"):
        load_gguf(write_tiny_gguf(tmp_path / "q5.gguf", model, qtypes={"up": "Q5_0"}))


# ------------------------------------------------------------------------------------- SmolLM2

PROMPTS = ["What is the capital of France? Answer in one word.",
           "Write a haiku about the sea.",
           "List three prime numbers."]


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = smollm2_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from shared.gguf_io import load_from_reader, read_gguf
    reader = read_gguf(path)  # opened once: the dequantisation test reads its raw tensors too
    model, tok = load_from_reader(reader, path)
    return path, model, tok, reader


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2):
    """Hugging Face's tokenizer built from the same GGUF (its own converter: an independent oracle)."""
    path = smollm2[0]
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_model(smollm2):
    """Hugging Face's Llama with its own GGUF dequantisation and Q/K un-permutation."""
    path = smollm2[0]
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def test_smollm2_config(smollm2):
    _, model, tok, _ = smollm2
    c = model.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.tie_embeddings and model.num_parameters() == 134_515_008
    assert tok.eos_id == 2 and tok.special_tokens["<|im_start|>"] == 1


def test_smollm2_dequantised_tensors_match_gguf(smollm2):
    _, model, _, reader = smollm2
    t = {x.name: x for x in reader.tensors}
    for name, ours in [("token_embd.weight", model.tok_emb.weight), ("blk.3.ffn_down.weight", model.blocks[3].mlp.down.weight),
                       ("blk.0.attn_v.weight", model.blocks[0].attn.v_proj.weight)]:
        x = t[name]
        theirs = gguf.quants.dequantize(x.data, x.tensor_type).reshape(ours.shape)
        assert np.array_equal(ours.detach().numpy(), theirs), name


TEXTS = ["Hello world", " leading space", "Numbers 12345 and 3.14159, dates 2024-06-01.",
         "Tabs\tand\nnew\n\nlines   spaced  out\r\n", "Ünïcödé — “quotes”, emoji 🤖🎉, 中文, العربية",
         "don't you'll I'M they've", "def f(x):\n    return x ** 2  # code", "\x04 control \x7f bytes",
         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|><repo_name>a/b<file_sep>", ""]


def test_smollm2_tokenizer_matches_hf(smollm2, hf_tokenizer):
    tok = smollm2[2]
    hf_tok = hf_tokenizer
    for text in TEXTS:
        theirs = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text) == theirs, text
        assert tok.decode(theirs) == hf_tok.decode(theirs), text


def test_chat_template_matches_the_gguf_template(hf_tokenizer):
    hf_tok = hf_tokenizer
    convs = [[{"role": "user", "content": "What is 2 + 2?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]]
    for conv in convs:
        for gen in (True, False):
            assert chat_prompt(conv, add_generation_prompt=gen) == hf_tok.apply_chat_template(
                conv, tokenize=False, add_generation_prompt=gen)


def test_smollm2_greedy_and_logits_match_hf(smollm2, hf_model):
    _, model, tok, _ = smollm2
    for i, q in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(chat_prompt([{"role": "user", "content": q}]))])
        ours = generate(model, ids, 8, eos_id=tok.eos_id)
        with torch.no_grad():
            theirs = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                       do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
        assert ours.tolist() == theirs.tolist(), q
        if i == 0:
            assert tok.decode(ours[0, ids.size(1):].tolist()).startswith("The capital of France is Paris.")
            with torch.no_grad():
                a, b = model(ours), hf_model(ours).logits
            # Same dequantised weights, same maths: only float32 summation order differs.
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
