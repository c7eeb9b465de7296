"""Document boundaries and data mixing: ``<|endoftext|>`` streams, per-document windows, weighted sources.

**Boundaries.** A corpus is many documents. Written into one token stream, each document is
followed by the end-of-text id (:func:`join_documents`), so the model learns where a text ends and,
at generation time, can say so. Training windows cut from that stream *cross* boundaries: a window
may hold the end of one play and the start of the next, and the first tokens of a document are then
predicted from an unrelated context. :func:`pack_documents` instead cuts every document on its own,
so no window crosses a boundary, at the price of padding the last, partial window of each
document (targets there are ``-100``, which ``F.cross_entropy`` ignores).

**Mixing.** Training data come from several sources, each with a sampling weight (GPT-3 took
60% of its tokens from filtered Common Crawl but sampled Wikipedia ~3.4 times per epoch).
:func:`mix` draws items source by source with those weights, each source walked in a fresh random
order per pass, so the weights (not the sources' sizes) decide what the model sees.

Sources: Brown et al. 2020 (GPT-3), table 2.2; Raffel et al. 2020 (T5), section 3.5.2;
Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

__all__ = ["join_documents", "pack_documents", "boundary_stats", "mix", "encode_parallel"]


def _check_ids(docs, name: str = "docs") -> list[np.ndarray]:
    if isinstance(docs, (str, bytes)) or not isinstance(docs, Sequence):
        raise TypeError(f"{name} must be a sequence of token-id sequences (one per document), "
                        f"got {type(docs).__name__}")
    out = []
    for i, d in enumerate(docs):
        if isinstance(d, str):
            raise TypeError(f"{name}[{i}] is a str: encode each document to token ids first")
        arr = d.detach().cpu().numpy() if isinstance(d, torch.Tensor) else np.asarray(d)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"{name}[{i}] must be a 1-D sequence of ints, got shape {arr.shape}, dtype {arr.dtype}")
        if arr.size and int(arr.min()) < 0:
            raise ValueError(f"{name}[{i}] holds a negative token id {int(arr.min())}")
        out.append(arr.astype(np.int64, copy=False))
    return out


def _check_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def join_documents(docs: Sequence[Sequence[int]], eot_id: int) -> np.ndarray:
    """One stream ``doc_0 <eot> doc_1 <eot> ...``: ``int64[sum(len(doc) + 1)]``.

    >>> join_documents([[5, 6], [7]], eot_id=0).tolist()
    [5, 6, 0, 7, 0]

    Raises:
        TypeError/ValueError: if ``docs`` is not a list of 1-D non-negative int sequences, or
            ``eot_id`` is not an integer >= 0.
    """
    eot_id = _check_int("eot_id", eot_id, 0)
    arrays = _check_ids(docs)
    eot = np.array([eot_id], dtype=np.int64)
    return np.concatenate([part for a in arrays for part in (a, eot)]) if arrays else np.zeros(0, np.int64)


def pack_documents(docs: Sequence[Sequence[int]], context_length: int, eot_id: int,
                   pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows that never cross a document boundary.

    Each document gets ``eot_id`` appended and is cut into consecutive windows of
    ``T = context_length`` inputs (the targets are the inputs shifted by one, as in
    ``shared.data.GPTDataset`` with ``stride = T``). The last window of a document is padded
    with ``pad_id`` (default ``eot_id``) on the right, and its padded targets are ``-100``.

    Returns:
        ``(x, y)``, both ``LongTensor[N, T]``: ``N = sum(ceil(len(doc) / T))`` windows (a
        document of ``L`` tokens plus its end-of-text has ``L`` targets), ``y == -100`` on padding.
    Raises:
        TypeError/ValueError: for bad ``docs``, ``context_length < 1`` or negative ids; ValueError
            if no document holds a token.

    >>> x, y = pack_documents([[1, 2, 3], [4]], context_length=2, eot_id=0)
    >>> x.tolist(), y.tolist()
    ([[1, 2], [3, 0], [4, 0]], [[2, 3], [0, -100], [0, -100]])
    """
    T = _check_int("context_length", context_length, 1)
    eot_id = _check_int("eot_id", eot_id, 0)
    pad_id = eot_id if pad_id is None else _check_int("pad_id", pad_id, 0)
    xs, ys = [], []
    for doc in _check_ids(docs):
        if doc.size == 0:
            continue
        stream = np.concatenate([doc, [eot_id]])        # L + 1 tokens -> L (input, target) pairs
        n_pairs = len(stream) - 1
        n_win = -(-n_pairs // T)                          # ceil
        x = np.full(n_win * T, pad_id, dtype=np.int64)
        y = np.full(n_win * T, -100, dtype=np.int64)
        x[:n_pairs], y[:n_pairs] = stream[:-1], stream[1:]
        xs.append(x.reshape(n_win, T))
        ys.append(y.reshape(n_win, T))
    if not xs:
        raise ValueError("no document holds a token: nothing to pack")
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def boundary_stats(doc_lengths: Sequence[int], context_length: int) -> dict[str, float]:
    """What each strategy costs for documents of ``doc_lengths`` tokens and windows of ``T`` tokens.

    Returns ``{"crossing_windows", "crossing_fraction", "packed_windows", "padding_fraction"}``:
    with one ``<eot>``-joined stream cut into windows of ``T`` (stride ``T``), how many windows
    hold parts of two or more documents, and which fraction of all windows that is; with
    :func:`pack_documents`, how many windows there are and which fraction of their target
    positions is padding.

    Raises:
        ValueError: for ``context_length < 1`` or a negative length.
    """
    T = _check_int("context_length", context_length, 1)
    lengths = [_check_int(f"doc_lengths[{i}]", n, 0) for i, n in enumerate(doc_lengths)]
    lengths = [n for n in lengths if n]
    ends = np.cumsum([n + 1 for n in lengths])            # stream position after each <eot>
    n_windows = max((int(ends[-1]) - 1) // T, 0) if lengths else 0
    # window w covers inputs [w*T, (w+1)*T); it crosses if some <eot> sits at position < (w+1)*T - 1
    # and a later document starts inside it: i.e. a document end falls strictly inside the window.
    eot_pos = ends - 1
    crossing = {int(p // T) for p in eot_pos[:-1] if p // T < n_windows and p % T != T - 1}
    packed = sum(-(-n // T) for n in lengths)
    return {"crossing_windows": len(crossing), "crossing_fraction": len(crossing) / n_windows if n_windows else 0.0,
            "packed_windows": packed, "padding_fraction": 1 - sum(lengths) / (packed * T) if packed else 0.0}


def mix(sources: Mapping[str, Sequence], weights: Mapping[str, float], seed: int = 0) -> Iterator[tuple[str, object]]:
    """An endless stream of ``(source_name, item)``: each draw picks a source with probability
    proportional to its weight, then that source's next item in a shuffled order (reshuffled
    after every pass, so items repeat only after the source is exhausted).

    Args:
        sources: ``{name: items}``; ``items`` is any sequence (texts, token windows, a Dataset).
        weights: ``{name: weight >= 0}`` for every source; normalised to sum to 1.
        seed: makes the stream repeatable (NumPy ``default_rng``).
    Raises:
        TypeError: if ``sources`` or ``weights`` is not a mapping.
        ValueError: if their names differ, a weight is negative or not finite, all are zero,
            or a source with a positive weight is empty.

    >>> stream = mix({"a": ["a0", "a1"], "b": ["b0"]}, {"a": 3, "b": 1}, seed=0)
    >>> [next(stream)[0] for _ in range(8)]
    ['a', 'a', 'a', 'b', 'b', 'a', 'a', 'b']
    """
    if not isinstance(sources, Mapping) or not isinstance(weights, Mapping):
        raise TypeError("sources and weights must be mappings {name: items} and {name: weight}")
    if set(sources) != set(weights):
        raise ValueError(f"weights must name exactly the sources: sources {sorted(sources)}, weights {sorted(weights)}")
    names = sorted(sources)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {dict(weights)}")
    if w.sum() == 0:
        raise ValueError("at least one weight must be positive")
    for n, wn in zip(names, w):
        if wn > 0 and len(sources[n]) == 0:
            raise ValueError(f"source {n!r} has weight {wn} but no items")
    p = w / w.sum()
    rng = np.random.default_rng(seed)
    orders = {n: iter(()) for n in names}

    def gen():
        while True:
            k = int(rng.choice(len(names), p=p))
            name = names[k]
            i = next(orders[name], None)
            if i is None:  # a new pass over this source, in a new order
                orders[name] = iter(rng.permutation(len(sources[name])).tolist())
                i = next(orders[name])
            yield name, sources[name][i]

    return gen()


_worker_tokenizer = None


def _init_worker(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_batch(texts: list[str]) -> list[list[int]]:
    return [_worker_tokenizer.encode_ordinary(t) if hasattr(_worker_tokenizer, "encode_ordinary")
            else _worker_tokenizer.encode(t) for t in texts]


def encode_parallel(tokenizer, texts: Sequence[str], processes: int = 2, chunk_docs: int = 4) -> list[list[int]]:
    """Encode ``texts`` (one list of ids per text, in order) with a pool of ``processes`` processes.

    The tokenizer is pickled to each worker once (pool initializer); texts travel in chunks of
    ``chunk_docs``. ``processes=1`` encodes in this process. Tokenisation is pure Python, so
    processes (not threads, which share one GIL) are what run it in parallel. Special tokens are
    encoded as plain text (``encode_ordinary``), as for raw documents.

    Raises:
        TypeError: if ``texts`` is not a sequence of strings. ValueError: if ``processes`` or
            ``chunk_docs`` is below 1.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of strings")
    processes, chunk_docs = _check_int("processes", processes, 1), _check_int("chunk_docs", chunk_docs, 1)
    if processes == 1:
        _init_worker(tokenizer)
        return _encode_batch(list(texts))
    parts = [list(texts[i:i + chunk_docs]) for i in range(0, len(texts), chunk_docs)]
    with ProcessPoolExecutor(processes, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        return [ids for part in pool.map(_encode_batch, parts) for ids in part]
