"""Byte-level BPE tokenizer (GPT-2 style), trained from scratch or loaded with GPT-2's merges.

Text becomes token ids in three steps:

1. **Pre-tokenise** with GPT-2's regex (:data:`GPT2_PATTERN`): split the text into chunks
   (words with their leading space, numbers, punctuation runs, whitespace). Merges never
   cross a chunk boundary, so " dog" and " dog." share the token for " dog".
2. **Bytes**: each chunk becomes its UTF-8 bytes, one id per byte (256 base tokens), so any
   text can be encoded and there is no "unknown token".
3. **Merges**: apply the learned merges ``(a, b) -> new_id`` in the order they were learned
   (lowest id first), until no learned pair is left.

Training learns the merges: repeatedly count adjacent pairs over all chunks, and merge the
most frequent pair into a new token. **Tie-breaking:** among pairs with the same count, the
*smallest* pair wins, comparing the first id, then the second (see :func:`best_pair`).

Worked example (the classic "aaabdaaabac" from Wikipedia's byte-pair-encoding article)::

    >>> tok = BPETokenizer.train("aaabdaaabac", vocab_size=256 + 3, special_tokens=())
    >>> tok.merges           # 'aa' -> 256, then 'ab' -> 257 (ties with (256, 97)), then 'aa'+'ab'
    {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    >>> tok.encode("aaabdaaabac")     # 'aaab' 'd' 'aaab' 'a' 'c'
    [258, 100, 258, 97, 99]
    >>> tok.decode([258, 100])
    'aaabd'

GPT-2 itself: :meth:`BPETokenizer.from_gpt2` loads GPT-2's 50,000 merges from the vendored
ranks file ``shared/assets/gpt2.tiktoken`` and gives the same ids as ``tiktoken``;
:func:`gpt2_encoding` builds tiktoken's own ``"gpt2"`` encoding from the same file, offline::

    >>> BPETokenizer.from_gpt2().encode("hello world")
    [31373, 995]
    >>> gpt2_encoding().encode("hello world")
    [31373, 995]

Sources: Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units";
Radford et al. 2019 (GPT-2, byte-level BPE and its regex); tiktoken's ``_educational.py`` and
Karpathy's minbpe (``recover_merges``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import json
import operator
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from pathlib import Path

import regex

__all__ = ["BPETokenizer", "gpt2_encoding", "load_gpt2_ranks", "recover_merges", "pretokenize",
           "get_stats", "merge", "best_pair", "encode_chunk", "naive_merges", "incremental_merges",
           "GPT2_PATTERN", "ENDOFTEXT", "GPT2_RANKS_PATH", "GPT2_RANKS_SHA256"]

#: GPT-2's pre-tokenisation regex, exactly as tiktoken writes it (``r50k_pat_str``): English
#: contractions, optional space + letters, optional space + numbers, optional space + other
#: symbols, then whitespace (a run of spaces keeps its last space for the next word).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
GPT2_RANKS_PATH = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_FORMAT = "shared.tokenizer.BPETokenizer/1"
_CACHE_MAX = 200_000  # per-tokenizer chunk cache entries before it is cleared


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Split ``text`` into chunks with the pre-tokenisation regex; merges never cross chunks.

    >>> pretokenize("Hello world, it's  42!")
    ['Hello', ' world', ',', ' it', "'s", ' ', ' 42', '!']

    Raises:
        TypeError: if ``text`` is not a string.
        ValueError: if ``pattern`` is invalid, has capturing groups, or skips characters of
            ``text`` (the chunks must add up to the whole text, or text would be lost).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    chunks = regex.findall(pattern, text)
    if sum(len(c) if isinstance(c, str) else -1 for c in chunks) != len(text):  # -1: a capturing group
        raise ValueError(f"pattern {pattern!r} does not split the whole text (it skips characters, or "
                         "has a capturing group); text would be lost")
    return chunks


def _compile_pattern(pattern: str):
    """Compile a pre-tokenisation regex; it must have no capturing group (``findall`` would
    return the groups instead of the chunks)."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a regex string, got {type(pattern).__name__}")
    try:
        pat = regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern is not a valid regex: {e}") from None
    if pat.groups:
        raise ValueError(f"pattern has {pat.groups} capturing group(s); use non-capturing (?:...) groups")
    return pat


def _chunks(pat, text: str) -> list[str]:
    """``pat.findall(text)``, checked to cover every character of ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    chunks = pat.findall(text)
    if sum(map(len, chunks)) != len(text):
        raise ValueError(f"pattern {pat.pattern!r} does not match every character of the text, so text "
                         "would be lost; add a catch-all alternative such as |\\s|. at its end")
    return chunks


def get_stats(ids, counts=None):
    """Count adjacent pairs in ``ids`` into the dict ``counts`` (a new dict if ``None``).

    >>> get_stats([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    _check_ids(ids)
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, idx):
    """Replace every occurrence of ``pair`` in ``ids`` by ``idx``, scanning left to right.

    >>> merge([97, 97, 97, 98], (97, 97), 256)   # 'aaab': the leftmost 'aa' wins
    [256, 97, 98]
    """
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise ValueError(f"pair must be a tuple of two ids, got {pair!r}")
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def best_pair(stats):
    """The pair to merge next: the highest count; ties go to the smallest pair ``(a, b)``.

    >>> best_pair({(5, 1): 3, (2, 9): 3, (0, 0): 1})
    (2, 9)
    """
    if not stats:
        raise ValueError("stats is empty: there is no pair to merge")
    return min(stats, key=lambda pair: (-stats[pair], pair))


def naive_merges(chunks, n_merges):
    """The textbook merge loop: recount every pair over all chunks after every merge.

    Args:
        chunks: one list of byte ids per pre-token occurrence (``[[72, 105], [32, 116], ...]``).
        n_merges: how many merges to learn; stops early when no pair is left.
    Returns:
        ``{(a, b): new_id}`` in the order learned, with new ids ``256, 257, ...``.
    Cost: O(n_merges × total length), slow; :func:`incremental_merges` gives the same result.
    """
    _check_count(n_merges=n_merges)
    merges = {}
    for k in range(n_merges):
        stats = {}
        for ids in chunks:
            get_stats(ids, stats)
        if not stats:
            break
        pair = best_pair(stats)
        idx = 256 + k
        chunks = [merge(ids, pair, idx) for ids in chunks]
        merges[pair] = idx
    return merges


def incremental_merges(word_counts, n_merges):
    """The same merges as :func:`naive_merges`, computed incrementally (fast).

    Args:
        word_counts: ``{chunk_bytes: count}``, each distinct pre-token once with its count.
        n_merges: how many merges to learn; stops early when no pair is left.
    Returns:
        ``{(a, b): new_id}`` in the order learned, with new ids ``256, 257, ...``.

    Pair counts live in ``stats``; ``where[pair]`` is the set of words containing it; a heap
    of ``(-count, pair)`` finds the best pair (stale heap entries are skipped). After a merge
    only the words that contained the pair are updated: their old pairs are subtracted and
    their new pairs added.
    """
    _check_count(n_merges=n_merges)
    words = [list(w) for w in word_counts]
    counts = list(word_counts.values())
    stats, where = defaultdict(int), defaultdict(set)
    for i, (ids, c) in enumerate(zip(words, counts)):
        for pair in zip(ids, ids[1:]):
            stats[pair] += c
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in stats.items()]
    heapq.heapify(heap)
    merges = {}
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if stats.get(pair, 0) != -neg_count or neg_count == 0:
            continue  # stale entry: the count changed after it was pushed
        idx = 256 + len(merges)
        merges[pair] = idx
        changed = set()
        for i in where.pop(pair):
            ids, c = words[i], counts[i]
            new = merge(ids, pair, idx)
            if len(new) == len(ids):
                continue  # the word no longer holds the pair
            for p in zip(ids, ids[1:]):
                stats[p] -= c
                changed.add(p)
            for p in zip(new, new[1:]):
                stats[p] += c
                where[p].add(i)
                changed.add(p)
            words[i] = new
        for p in changed:
            if stats[p] > 0:
                heapq.heappush(heap, (-stats[p], p))
            else:
                del stats[p]
    return merges


def encode_chunk(ids, merges):
    """Apply ``merges`` to one chunk's ids: repeatedly merge the adjacent pair that was learned
    first (lowest new id = lowest rank), leftmost first, until no learned pair is left.

    >>> encode_chunk([97, 97, 97, 98], {(97, 97): 256, (97, 98): 257, (256, 257): 258})
    [258]
    """
    _check_ids(ids)
    never = 1 << 62  # the rank of a pair that was never learned
    ids = list(ids)
    ranks = [merges.get(pair, never) for pair in zip(ids, ids[1:])]  # ranks[i]: pair at i, i+1
    while ranks:
        rank = min(ranks)
        if rank == never:
            break
        i = ranks.index(rank)            # the leftmost pair with that rank
        ids[i:i + 2] = [rank]            # merge it: the new token's id is its rank
        del ranks[i]                     # only the two pairs touching the new token change
        if i > 0:
            ranks[i - 1] = merges.get((ids[i - 1], rank), never)
        if i < len(ranks):
            ranks[i] = merges.get((rank, ids[i + 1]), never)
    return ids


def _check_ids(ids) -> None:
    """Token ids come as a list/tuple (or array) of ints; a string is a common mistake."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of int token ids, not {type(ids).__name__} "
                        "(encode the text first)")


def _check_count(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")


def _as_id(i) -> int:
    """One token id as a Python int: ints, NumPy integers and 0-d integer tensors, never a
    float (``104.9`` must not silently become 104) or a bool."""
    if isinstance(i, bool):
        raise TypeError("ids must be int token ids, got a bool")
    try:
        return operator.index(i)
    except TypeError:
        raise TypeError(f"ids must be int token ids, got {i!r} ({type(i).__name__})") from None


@functools.lru_cache(maxsize=64)
def _special_regex(tokens: frozenset[str]):
    """One regex matching any of ``tokens`` (longest first, so overlaps are deterministic).

    Cached: :meth:`BPETokenizer.encode` needs it on every call, with the same few sets."""
    return regex.compile("|".join(regex.escape(t) for t in sorted(tokens, key=lambda t: (-len(t), t))))


class BPETokenizer:
    """A byte-level BPE tokenizer: GPT-2's regex, 256 byte tokens, learned merges, specials.

    Ids: byte ``b`` has id ``byte_ids[b]`` (``b`` itself for trained tokenizers; a fixed
    permutation of 0..255 for GPT-2), merge ``k`` creates id ``256 + k``, and special tokens
    come last (GPT-2: ``<|endoftext|>`` = 50256). ``vocab_size = 256 + len(merges) + len(specials)``.

    Build one with :meth:`train`, :meth:`from_gpt2` or :meth:`load`. Example::

        >>> tok = BPETokenizer.train("low lower lowest " * 20, vocab_size=262)
        >>> tok.vocab_size, tok.special_tokens
        (262, {'<|endoftext|>': 261})
        >>> [tok.decode([i]) for i in tok.merges.values()]        # merges learned, in order
        ['lo', 'low', ' low', ' lowe', 'st']
        >>> ids = tok.encode(" lowest<|endoftext|>", allowed_special="all")
        >>> ids, [tok.decode([i]) for i in ids]
        ([259, 260, 261], [' lowe', 'st', '<|endoftext|>'])

    Raises:
        ValueError: on inconsistent merges, byte ids or special-token ids.
    """

    def __init__(self, merges: dict[tuple[int, int], int], special_tokens: dict[str, int] | None = None,
                 pattern: str = GPT2_PATTERN, byte_ids: Collection[int] | None = None):
        byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        if sorted(byte_ids) != list(range(256)):
            raise ValueError("byte_ids must be a permutation of 0..255 (one id per byte value)")
        self.byte_ids = byte_ids
        self.vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(byte_ids)}
        self.merges: dict[tuple[int, int], int] = {}
        for k, ((a, b), idx) in enumerate(merges.items()):
            if idx != 256 + k:
                raise ValueError(f"merge #{k} {(a, b)} creates id {idx}; merge k must create id 256 + k")
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge #{k} {(a, b)} uses an id that does not exist yet")
            self.merges[(int(a), int(b))] = idx
            self.vocab[idx] = self.vocab[a] + self.vocab[b]
        n = 256 + len(self.merges)
        if special_tokens is None:
            special_tokens = {}
        self.special_tokens: dict[str, int] = dict(special_tokens)
        for name, idx in self.special_tokens.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"special token names must be non-empty strings, got {name!r}")
            if idx in self.vocab or not (0 <= idx < n + len(self.special_tokens)):
                raise ValueError(f"special token {name!r} has id {idx}, which is taken or out of range")
            self.vocab[idx] = name.encode("utf-8")
        if sorted(self.vocab) != list(range(len(self.vocab))):
            raise ValueError("token ids must be exactly 0 .. vocab_size - 1")
        self._token_id = {self.vocab[i]: i for i in range(n)}  # bytes -> id, special tokens excluded
        self.pattern = pattern
        self._pat = _compile_pattern(pattern)
        self._cache: dict[str, list[int]] = {}

    # ----------------------------------------------------------------------------- building
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Collection[str] = (ENDOFTEXT,),
              pattern: str = GPT2_PATTERN, naive: bool = False) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Args:
            text: training text. Special tokens inside it are cut out (never merged across).
            vocab_size: the final vocabulary size, special tokens included.
            special_tokens: names that get the last ids, in this order.
            pattern: the pre-tokenisation regex.
            naive: use :func:`naive_merges` (slow, for comparison) instead of
                :func:`incremental_merges`. Both give identical merges.
        Raises:
            TypeError: if ``text`` is not a str, ``vocab_size`` not an int, or
                ``special_tokens`` is a single string (write ``("<|endoftext|>",)``).
            ValueError: if ``vocab_size < 256 + len(special_tokens)``, a special token is
                empty, or ``pattern`` does not match every character (text would be lost).
        Warns:
            if the text runs out of pairs before ``vocab_size`` is reached (the tokenizer is
            then smaller; check :attr:`vocab_size`).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
        if isinstance(special_tokens, (str, bytes)):
            raise TypeError(f"special_tokens must be a collection of names, not the single string "
                            f"{special_tokens!r}; write ({special_tokens!r},)")
        special_tokens = list(dict.fromkeys(special_tokens))
        if any(not isinstance(t, str) or not t for t in special_tokens):
            raise ValueError(f"special_tokens must be non-empty strings, got {special_tokens!r}")
        pat = _compile_pattern(pattern)
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs 256 byte "
                             f"tokens plus {len(special_tokens)} special token(s), so vocab_size >= "
                             f"{256 + len(special_tokens)}")
        n_merges = vocab_size - 256 - len(special_tokens)
        pieces = _special_regex(frozenset(special_tokens)).split(text) if special_tokens else [text]
        chunks = [c for piece in pieces for c in _chunks(pat, piece)]
        if naive:
            merges = naive_merges([list(c.encode("utf-8")) for c in chunks], n_merges)
        else:
            merges = incremental_merges(Counter(c.encode("utf-8") for c in chunks), n_merges)
        if len(merges) < n_merges:
            warnings.warn(f"the training text ran out of pairs after {len(merges)} merges; "
                          f"vocab_size is {256 + len(merges) + len(special_tokens)}, not {vocab_size}",
                          stacklevel=2)
        n = 256 + len(merges)
        return cls(merges, {t: n + j for j, t in enumerate(special_tokens)}, pattern)

    @classmethod
    def from_gpt2(cls) -> BPETokenizer:
        """GPT-2's tokenizer: 50,000 merges recovered from the vendored ranks, ``<|endoftext|>`` = 50256.

        Gives ids identical to ``tiktoken.get_encoding("gpt2")`` on any text. Offline.
        """
        byte_ids, merges = _gpt2_merges()
        return cls(dict(merges), {ENDOFTEXT: 50256}, GPT2_PATTERN, byte_ids)

    # ---------------------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + special tokens."""
        return len(self.vocab)

    def _encode_piece(self, chunk: str) -> list[int]:
        """Encode one chunk that is not in the cache yet, and cache it."""
        data = chunk.encode("utf-8")
        token = self._token_id.get(data)  # a chunk that is a whole token (as in tiktoken)
        ids = [token] if token is not None else encode_chunk([self.byte_ids[b] for b in data], self.merges)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` ignoring special tokens (they are encoded as plain text).

        Raises:
            TypeError: if ``text`` is not a str.
            ValueError: if the tokenizer's pattern skips characters of ``text``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: same fix-up as tiktoken
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        out: list[int] = []
        cache, encode_piece = self._cache, self._encode_piece
        for chunk in _chunks(self._pat, text):
            ids = cache.get(chunk)
            out += encode_piece(chunk) if ids is None else ids
        return out

    def encode(self, text: str, allowed_special: str | Collection[str] = frozenset(),
               disallowed_special: str | Collection[str] = "all") -> list[int]:
        """Encode ``text`` to a list of ids, with tiktoken's rules for special tokens.

        Args:
            allowed_special: special tokens to encode as their single id, or ``"all"``.
            disallowed_special: special tokens whose text raises an error, or ``"all"``
                (every special token not allowed). Pass ``()`` to encode them as plain text.
        Raises:
            TypeError: if ``text`` is not a str.
            ValueError: if ``text`` contains a disallowed special token, or if a special-token
                argument is a string other than ``"all"`` (write ``{"<|endoftext|>"}``).

        >>> tok = BPETokenizer.from_gpt2()
        >>> tok.encode("Hi<|endoftext|>", allowed_special={"<|endoftext|>"})
        [17250, 50256]
        >>> tok.encode("<|endoftext|>", disallowed_special=())[:3]
        [27, 91, 437]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        for arg in (allowed_special, disallowed_special):
            if isinstance(arg, str) and arg != "all":
                raise ValueError(f"special-token arguments take 'all' or a set of names, not the string {arg!r}; "
                                 f"write {{{arg!r}}}")
        specials = set(self.special_tokens)
        allowed = specials if allowed_special == "all" else set(allowed_special) & specials
        disallowed = specials - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed and (m := _special_regex(frozenset(disallowed)).search(text)):
            raise ValueError(
                f"Encountered text corresponding to disallowed special token {m.group()!r}. To encode it as "
                f"the special token, pass allowed_special={{{m.group()!r}}} (or 'all'); to encode it as plain "
                f"text, pass disallowed_special=() (or leave it out of disallowed_special).")
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in _special_regex(frozenset(allowed)).finditer(text):
            out += self.encode_ordinary(text[start:m.start()])
            out.append(self.special_tokens[m.group()])
            start = m.end()
        return out + self.encode_ordinary(text[start:])

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (may end in the middle of a UTF-8 character).

        Raises:
            TypeError: if ``ids`` is a string or holds a non-integer (a float, a bool).
            ValueError: on an id outside ``0 .. vocab_size - 1``.
        """
        _check_ids(ids)
        try:
            return b"".join(self.vocab[_as_id(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text; invalid UTF-8 (a token sequence cut mid-character) becomes U+FFFD.

        Raises:
            TypeError, ValueError: as :meth:`decode_bytes`.
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as plain JSON (pattern, byte ids, merges in order, specials)."""
        path = Path(path)
        data = {"format": _FORMAT, "pattern": self.pattern, "byte_ids": self.byte_ids,
                "merges": [list(p) for p in self.merges], "special_tokens": self.special_tokens}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not a saved ``BPETokenizer`` (not JSON, truncated, another
                format, or a missing or malformed field).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a saved BPETokenizer (not valid JSON: truncated or "
                             f"another file?): {e}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved BPETokenizer (expected format {_FORMAT!r})")
        missing = [k for k in ("pattern", "byte_ids", "merges", "special_tokens") if k not in data]
        if missing:
            raise ValueError(f"{path} is not a complete saved BPETokenizer: it lacks {', '.join(missing)}")
        try:
            merges = {(a, b): 256 + k for k, (a, b) in enumerate(data["merges"])}
            return cls(merges, data["special_tokens"], data["pattern"], data["byte_ids"])
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path} is not a valid saved BPETokenizer: {e}") from None

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, specials={list(self.special_tokens)})"


# ------------------------------------------------------------------------------------ GPT-2
def load_gpt2_ranks(path: str | os.PathLike = GPT2_RANKS_PATH, sha256: str = GPT2_RANKS_SHA256) -> dict[bytes, int]:
    """Read GPT-2's ranks (``{token_bytes: rank}``) from the vendored tiktoken file, checking it.

    The file has one line ``<base64 token> <rank>`` per token; rank = token id.
    Raises:
        ValueError: if the file's SHA-256 is not ``sha256`` (corrupted or replaced).
    """
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: SHA-256 {digest} does not match the expected {sha256}; the vendored "
                         "GPT-2 ranks file is corrupted or modified (see shared/assets/LICENSE-gpt2-tiktoken.txt)")
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines() if line)}


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's byte-level BPE of ``token`` using only ranks below ``max_rank``."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def recover_merges(ranks: dict[bytes, int]) -> dict[tuple[int, int], int]:
    """Turn byte-level ranks into merges ``{(id_a, id_b): id}``.

    A token of rank ``r`` was made from the two parts that BPE produces on its own bytes when
    only merges of rank below ``r`` are allowed (tiktoken ``_educational.py``, minbpe ``gpt4.py``).
    """
    merges = {}
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"rank {rank} ({token!r}) is not the merge of two earlier tokens")
        merges[(ranks[parts[0]], ranks[parts[1]])] = rank
    return merges


@functools.lru_cache(maxsize=1)
def _gpt2_merges() -> tuple[list[int], tuple[tuple[tuple[int, int], int], ...]]:
    ranks = load_gpt2_ranks()
    return [ranks[bytes([b])] for b in range(256)], tuple(recover_merges(ranks).items())


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """``tiktoken.Encoding`` identical to ``tiktoken.get_encoding("gpt2")``, built offline.

    Uses the vendored ranks (checksum verified), GPT-2's regex and ``<|endoftext|>`` = 50256.
    Never touches the network (``tiktoken.get_encoding`` downloads the files).
    """
    import tiktoken

    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_gpt2_ranks(),
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)
