"""GGUF files (llama.cpp's format) -> a :class:`shared.llama.LlamaModel` and its tokenizer.

The container (header, metadata, tensor table) is read with the ``gguf`` library, since the
file format is not what the course teaches. What is taught, and written here:

* **Dequantisation** of the block formats (Chapter 6): a tensor is cut into blocks of 32
  weights along its rows; each block stores small integers ``q`` and float16 constants.

  ======== ======= ================================================================
  type     bytes   weights of one block of 32
  ======== ======= ================================================================
  ``F32``   128    stored as they are
  ``F16``    64    stored as float16
  ``Q8_0``   34    ``d * q``, ``d`` float16, ``q`` int8
  ``Q4_0``   18    ``d * (q - 8)``, ``q`` 4-bit: byte ``j`` holds ``q_j`` (low) and ``q_{j+16}`` (high)
  ``Q4_1``   20    ``d * q + m``, ``d, m`` float16, ``q`` 4-bit as in Q4_0
  ======== ======= ================================================================

  (``ggml-quants.c`` ``dequantize_row_*``; the tests check each against
  ``gguf.quants.dequantize`` bit for bit.)
* **Undoing llama.cpp's Q/K row permutation.** ``convert_hf_to_gguf.py`` reorders the rows of
  ``W_q`` and ``W_k`` inside each head from the half-split RoPE layout (pairs ``i, i + hd/2``)
  to the interleaved one (pairs ``2i, 2i + 1``) that its kernels use. :func:`unpermute_qk`
  puts them back, so :func:`shared.llama.apply_rope` (half-split) is right for them.
* **The tokenizer**: :class:`GGUFTokenizer` runs the course's byte-level BPE
  (:class:`shared.tokenizer.BPETokenizer`) on the GGUF's vocabulary and merges, with an id map.

Errors name the problem: a file that is not GGUF or is cut short, a non-Llama architecture,
a quantisation type this module does not dequantise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from shared.tokenizer import GPT2_PATTERN, BPETokenizer

__all__ = ["dequantize", "unpermute_qk", "read_gguf", "load_gguf", "load_from_reader", "GGUFTokenizer",
           "bytes_to_unicode", "BLOCK_BYTES"]

QK = 32  # weights per block in every format below
BLOCK_BYTES = {"F32": 4 * QK, "F16": 2 * QK, "Q8_0": 2 + QK, "Q4_0": 2 + QK // 2, "Q4_1": 4 + QK // 2}


def _f16(raw: np.ndarray) -> np.ndarray:
    """uint8 ``[n, 2]`` little-endian float16 bytes -> float32 ``[n, 1]``."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """uint8 ``[n, 16]`` -> the 32 4-bit values ``[n, 32]``: low nibbles first, then high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)


def dequantize(data: np.ndarray | torch.Tensor, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Turn the raw bytes of one GGUF tensor into a float32 tensor of ``shape`` (PyTorch order).

    Args:
        data: the tensor's bytes (``uint8``, any shape; ``gguf``'s ``ReaderTensor.data``), or
            already-decoded ``float32``/``float16`` values for ``F32``/``F16``.
        qtype: ``"F32" | "F16" | "Q8_0" | "Q4_0" | "Q4_1"``.
        shape: the PyTorch shape, e.g. ``(out_features, in_features)``; its last dim is a
            multiple of 32 for the block formats.

    Written with NumPy (its uint8 slicing is several times faster than PyTorch's here).

    Raises:
        ValueError: for another ``qtype`` (named), or a byte count that does not match ``shape``.
    """
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"quantisation type {qtype!r} is not supported; supported: {sorted(BLOCK_BYTES)}")
    n = int(np.prod(shape))
    a = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if qtype in ("F32", "F16") and a.dtype != np.uint8:
        if a.size != n:
            raise ValueError(f"{qtype} tensor has {a.size} values, shape {shape} needs {n}")
        return torch.from_numpy(a.astype(np.float32).reshape(shape))
    if qtype in ("Q8_0", "Q4_0", "Q4_1") and n % QK != 0:
        raise ValueError(f"{qtype}: shape {shape} is not a whole number of {QK}-weight blocks")
    raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    n_bytes = n * BLOCK_BYTES[qtype] // QK
    if raw.size != n_bytes:
        raise ValueError(f"{qtype} tensor has {raw.size} bytes, shape {shape} needs {n_bytes} "
                         "(file truncated or wrong type?)")
    if qtype == "F32":
        return torch.from_numpy(raw.view(np.float32).reshape(shape).copy())
    if qtype == "F16":
        return torch.from_numpy(raw.view(np.float16).astype(np.float32).reshape(shape))
    blocks = raw.reshape(n // QK, BLOCK_BYTES[qtype])  # one row per block of 32 weights
    if qtype == "Q8_0":
        out = _f16(blocks[:, :2]) * blocks[:, 2:].view(np.int8).astype(np.float32)  # d * q
    elif qtype == "Q4_0":
        out = _f16(blocks[:, :2]) * (_nibbles(blocks[:, 2:]) - 8)  # d * (q - 8)
    else:  # Q4_1
        out = _f16(blocks[:, :2]) * _nibbles(blocks[:, 4:]) + _f16(blocks[:, 2:4])  # d * q + m
    return torch.from_numpy(out.reshape(shape))


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo ``convert_hf_to_gguf.py``'s ``permute`` of a ``[n_heads * hd, d_in]`` Q or K weight.

    llama.cpp stores each head's rows as interleaved pairs ``(0, hd/2), (1, hd/2 + 1), ...``;
    Hugging Face and :mod:`shared.llama` use halves ``[0 .. hd/2), [hd/2 .. hd)``. Shapes:
    ``[H, hd/2, 2, d_in] -> swap -> [H, 2, hd/2, d_in]``.
    """
    rows, d_in = w.shape
    if rows % (2 * n_heads) != 0:
        raise ValueError(f"unpermute_qk: {rows} rows are not n_heads={n_heads} heads of an even size")
    return w.reshape(n_heads, rows // n_heads // 2, 2, d_in).transpose(1, 2).reshape(rows, d_in)


# ------------------------------------------------------------------------------ the container

def read_gguf(path: str | os.PathLike):
    """Open a GGUF file with ``gguf.GGUFReader``, turning its failures into named errors.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if it is not a GGUF file, or it is truncated (a tensor runs past the end).
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the reader raises many types on a cut-off file
        raise ValueError(f"{path}: cannot read the GGUF header/tensor table; the file is truncated or "
                         f"corrupt ({type(e).__name__}: {e})") from e
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise ValueError(f"{path} is truncated: tensor {t.name!r} needs bytes up to "
                             f"{t.data_offset + t.n_bytes}, the file has {size}")
    return reader


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise ValueError(f"GGUF metadata key {key!r} is missing")
        return default
    return f.contents()


def _config_from_gguf(reader, path) -> "LlamaConfig":  # noqa: F821
    from shared.llama import LlamaConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture is {arch!r}; load_gguf reads Llama models only")
    g = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    names = {t.name: t for t in reader.tensors}
    n_heads = int(g("attention.head_count"))
    d_model = int(g("embedding_length"))
    vocab = int(g("vocab_size", len(_field(reader, "tokenizer.ggml.tokens", []))))
    if "token_embd.weight" in names:
        vocab = int(names["token_embd.weight"].shape[1])
    head_dim = int(g("rope.dimension_count", d_model // n_heads))
    return LlamaConfig(vocab_size=vocab, context_length=int(g("context_length")), d_model=d_model,
                       n_layers=int(g("block_count")), n_heads=n_heads,
                       n_kv_heads=int(g("attention.head_count_kv", n_heads)),
                       d_ff=int(g("feed_forward_length")), rope_theta=float(g("rope.freq_base", 10000.0)),
                       norm_eps=float(g("attention.layer_norm_rms_epsilon")),
                       tie_embeddings="output.weight" not in names, head_dim=head_dim)


_GGUF_BLOCK = {  # ours (inside blocks.{i}) -> llama.cpp (inside blk.{i})
    "norm1.weight": "attn_norm.weight", "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight", "attn.v_proj.weight": "attn_v.weight",
    "attn.o_proj.weight": "attn_output.weight", "norm2.weight": "ffn_norm.weight",
    "mlp.gate.weight": "ffn_gate.weight", "mlp.up.weight": "ffn_up.weight",
    "mlp.down.weight": "ffn_down.weight",
}


def _gguf_name(name: str) -> str:
    top = {"tok_emb.weight": "token_embd.weight", "final_norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name]
    _, i, rest = name.split(".", 2)
    return f"blk.{i}.{_GGUF_BLOCK[rest]}"


def load_gguf(path: str | os.PathLike):
    """Read a Llama GGUF file -> ``(LlamaModel, GGUFTokenizer)``, the model in float32 eval mode.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file, truncated, not ``general.architecture = llama``, a
            quantisation type other than F32/F16/Q8_0/Q4_0/Q4_1 (named, with the tensor), or a
            tensor missing or of the wrong shape.
    """
    return load_from_reader(read_gguf(path), path)


def load_from_reader(reader, path: str | os.PathLike = "<gguf>"):
    """:func:`load_gguf` for a file already opened with :func:`read_gguf` (``path`` names it in errors)."""
    from shared.llama import _empty_model, _load_named

    cfg = _config_from_gguf(reader, path)
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists the fastest dim first
        qtype = t.tensor_type.name
        if qtype not in BLOCK_BYTES:
            raise ValueError(f"{path}: tensor {t.name!r} has quantisation type {qtype}, which is not "
                             f"supported (supported: {sorted(BLOCK_BYTES)})")
        w = dequantize(t.data, qtype, shape)
        if t.name.endswith("attn_q.weight"):
            w = unpermute_qk(w, cfg.n_heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_qk(w, cfg.n_kv_heads)
        tensors[t.name] = w
    model = _empty_model(cfg)
    _load_named(model, tensors, {k: _gguf_name(k) for k in model.state_dict()}, str(path))
    return model.eval(), GGUFTokenizer.from_reader(reader)


# ------------------------------------------------------------------------------- the tokenizer

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters (``' '`` -> ``'Ġ'``), in
    which byte-level BPE vocabularies (GPT-2, SmolLM2, Llama 3) write their tokens.
    Printable Latin-1 bytes map to themselves, the other 68 to ``chr(256 + k)`` in order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class GGUFTokenizer:
    """A GGUF's byte-level BPE (``tokenizer.ggml.model = gpt2``) on the course's BPE.

    The course :class:`shared.tokenizer.BPETokenizer` numbers byte ``b`` as ``b`` and merge
    ``k`` as ``256 + k``; the GGUF numbers special tokens first, then the byte tokens it has,
    then merge ``k``'s result. So this adapter keeps a course tokenizer over the GGUF's merges
    (in rank order, which is how both apply them) and two arrays that translate ids.
    A byte that has no token of its own (SmolLM2 lacks 21, e.g. ``\x04``) is dropped, as
    Hugging Face's BPE does when it has no byte fallback.

    Like Hugging Face tokenizers, :meth:`encode` turns special-token text (``<|im_start|>``)
    into its id by default.

    Attributes:
        special_tokens: ``{text: id}`` of the control tokens (``<|im_start|>`` = 1 in SmolLM2).
        bos_id, eos_id, pad_id, unk_id: from the GGUF metadata (None when absent).
    """

    def __init__(self, tokens: list[str], token_types: list[int], merges: list[str],
                 bos_id=None, eos_id=None, pad_id=None, unk_id=None, chat_template: str | None = None):
        b2u = bytes_to_unicode()
        u2b = {c: b for b, c in b2u.items()}
        tid = {t: i for i, t in enumerate(tokens)}
        self.tokens = list(tokens)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.chat_template = chat_template
        to_model = [tid.get(b2u[b], -1) for b in range(256)]  # -1: this byte has no token
        course_merges: dict[tuple[int, int], int] = {}
        course_id = {b2u[b]: b for b in range(256)}  # token text -> course id
        for k, m in enumerate(merges):
            a, b = m.split(" ")
            if a not in course_id or b not in course_id or (a + b) not in tid:
                raise ValueError(f"GGUF merge #{k} {m!r} uses a token that does not exist")
            course_merges[(course_id[a], course_id[b])] = 256 + k
            course_id[a + b] = 256 + k
            to_model.append(tid[a + b])
        control = {tokens[i]: i for i, ty in enumerate(token_types) if ty in (3, 4)}  # CONTROL, USER_DEFINED
        n = 256 + len(course_merges)
        specials = {text: n + j for j, text in enumerate(control)}
        to_model += list(control.values())
        self.bpe = BPETokenizer(course_merges, specials, GPT2_PATTERN)
        self.special_tokens = dict(control)
        self._to_model = to_model
        self._to_course = {m: c for c, m in enumerate(self._to_model) if m >= 0}
        missing = [i for i in range(len(tokens)) if i not in self._to_course]
        if missing:
            raise ValueError(f"{len(missing)} GGUF tokens are neither bytes, merges nor control tokens "
                             f"(first: {tokens[missing[0]]!r}); this vocabulary is not plain byte-level BPE")

    @classmethod
    def from_reader(cls, reader) -> GGUFTokenizer:
        """Build from an open ``gguf.GGUFReader``.

        Raises:
            ValueError: if ``tokenizer.ggml.model`` is not ``"gpt2"`` (byte-level BPE).
        """
        model = _field(reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"tokenizer.ggml.model is {model!r}; GGUFTokenizer reads byte-level BPE ('gpt2') only")
        opt = lambda k: _field(reader, f"tokenizer.ggml.{k}", -1)  # noqa: E731
        ids = {k: (None if opt(f"{k}_token_id") == -1 else int(opt(f"{k}_token_id")))
               for k in ("bos", "eos", "padding", "unknown")}
        template = reader.fields.get("tokenizer.chat_template")
        return cls(_field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type"),
                   _field(reader, "tokenizer.ggml.merges"), ids["bos"], ids["eos"], ids["padding"],
                   ids["unknown"], None if template is None else template.contents())

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> GGUFTokenizer:
        """Read only the tokenizer of a GGUF file."""
        return cls.from_reader(read_gguf(path))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, allowed_special="all", disallowed_special=()) -> list[int]:
        """``text`` -> GGUF token ids. Special-token text becomes its id unless
        ``allowed_special`` says otherwise (same arguments as ``BPETokenizer.encode``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        to_model = self._to_model
        ids = [to_model[i] for i in self.bpe.encode(text, allowed_special, disallowed_special)]
        return [i for i in ids if i >= 0] if -1 in ids else ids

    def _course_ids(self, ids) -> list[int]:
        try:
            return [self._to_course[int(i)] for i in ids]
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside 0 .. {self.vocab_size - 1}") from None

    def decode_bytes(self, ids) -> bytes:
        """GGUF ids -> raw bytes (may end inside a UTF-8 character)."""
        return self.bpe.decode_bytes(self._course_ids(ids))

    def decode(self, ids) -> str:
        """GGUF ids -> text (invalid UTF-8 becomes U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"GGUFTokenizer(vocab_size={self.vocab_size}, merges={len(self.bpe.merges)}, specials={len(self.special_tokens)})"
