"""Deduplication: exact (hashing) and near-duplicate (MinHash + LSH banding).

**Exact**: two texts are duplicates when their normalised forms hash alike
(:func:`dedup_key`: NFKC, case-folded, whitespace collapsed). :func:`exact_duplicates` groups them.

**Near-duplicate**: the Jaccard similarity of two shingle sets, ``J(A, B) = |A ∩ B| / |A ∪ B|``,
is estimated with MinHash. For a random permutation ``π`` of all shingles,
``P[min π(A) = min π(B)] = J(A, B)``; with ``k`` independent hash functions standing in for
permutations, the fraction of the ``k`` minima that agree estimates ``J`` with standard error
``sqrt(J (1 - J) / k)``. The hash functions are the universal family::

    h_i(x) = ((a_i * x + b_i) mod p) mod 2**32,   p = 2**61 - 1,  a_i in [1, 2**32), b_i in [0, 2**32)

applied to a 32-bit SHA-1 hash ``x`` of each shingle (``a_i * x + b_i < 2**64``: exact in uint64).

Comparing every pair of signatures is quadratic. **LSH banding** cuts each signature into ``b``
bands of ``r`` rows and only compares documents that agree on *every* row of *some* band. Two
documents with similarity ``s`` become candidates with probability ``1 - (1 - s**r)**b``: an S-curve
that rises steeply near ``(1 / b) ** (1 / r)``. :func:`lsh_params` picks ``b, r`` (``b * r <= k``)
that minimise the area of false positives below the threshold plus false negatives above it.

Example::

    >>> docs = ["the quick brown fox jumps over the lazy dog", "the quick brown fox jumps over the lazy cat",
    ...         "completely different words in this one here"]
    >>> exact_duplicates(["To be, or not", "to  BE, or not", "other"])
    [[0, 1]]
    >>> [(i, j) for i, j, _ in near_duplicates(docs, threshold=0.5, ngram=2)]
    [(0, 1)]

Sources: A. Broder, "On the resemblance and containment of documents" (1997); J. Leskovec,
A. Rajaraman, J. Ullman, *Mining of Massive Datasets*, ch. 3 (MinHash 3.3, banding 3.4);
Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better". ``datasketch``
(``MinHash(scheme="legacy")``, ``MinHashLSH``) is the oracle in ``tests/test_dedup.py``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["dedup_key", "exact_duplicates", "shingles", "make_permutations", "minhash_signatures",
           "estimate_jaccard", "jaccard", "lsh_params", "lsh_candidates", "near_duplicates",
           "duplicate_groups", "MERSENNE_PRIME", "MAX_HASH"]

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+")


def _check_docs(docs, name: str = "docs") -> list[str]:
    if isinstance(docs, str) or not isinstance(docs, Sequence):
        raise TypeError(f"{name} must be a sequence of strings (a list), got {type(docs).__name__}")
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(d).__name__}")
    return list(docs)


def _check_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def dedup_key(text: str) -> str:
    """The form two texts must share to count as exact duplicates: NFKC, case-folded, whitespace collapsed.

    >>> dedup_key("  Hey,\\tnonny  NONNY ")
    'hey, nonny nonny'
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_duplicates(docs: Sequence[str], normalize: bool = True) -> list[list[int]]:
    """Groups of indices of identical texts (after :func:`dedup_key` if ``normalize``).

    Each text is hashed (SHA-256 of its UTF-8) into a dict, so the cost is linear in the total
    length. Only groups of two or more are returned, each sorted, ordered by first index; keeping
    ``group[0]`` of each group deduplicates. Empty (or all-whitespace) texts are ignored.

    Raises:
        TypeError: if ``docs`` is not a sequence of strings.
    """
    docs = _check_docs(docs)
    seen: dict[bytes, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        key = dedup_key(d) if normalize else d
        if key.strip():
            seen[hashlib.sha256(key.encode("utf-8")).digest()].append(i)
    return sorted((g for g in seen.values() if len(g) > 1), key=lambda g: g[0])


def shingles(text: str, ngram: int = 3) -> set[str]:
    """The set of word ``ngram``-grams of ``text`` (lower-cased words, punctuation dropped).

    A text with fewer than ``ngram`` words gives its whole word sequence as one shingle (and an
    empty text the empty set), so short lines can still be compared.

    >>> sorted(shingles("Hey, nonny nonny!", ngram=2))
    ['hey nonny', 'nonny nonny']

    Raises:
        TypeError: if ``text`` is not a ``str``; ValueError: if ``ngram < 1``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ngram = _check_int("ngram", ngram)
    words = _WORD.findall(text.lower())
    if len(words) < ngram:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}


def make_permutations(num_perm: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``, two ``uint64[num_perm]`` arrays: the parameters of the ``num_perm`` hash functions.

    ``a`` in ``[1, 2**32)`` and ``b`` in ``[0, 2**32)``, drawn from ``numpy.random.default_rng(seed)``.
    """
    num_perm = _check_int("num_perm", num_perm)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b


def _hash32(shingle: str) -> int:
    """A 32-bit hash of a shingle: the first 4 bytes of its SHA-1, little-endian (as datasketch)."""
    return int.from_bytes(hashlib.sha1(shingle.encode("utf-8")).digest()[:4], "little")


def minhash_signatures(docs: Sequence[str] | Sequence[set[str]], num_perm: int = 128, ngram: int = 3,
                       seed: int = 0, permutations: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """MinHash signatures, ``uint64[n_docs, num_perm]``: row ``d``, column ``i`` is ``min over shingles x of h_i(x)``.

    Args:
        docs: texts (shingled with :func:`shingles`) or ready-made shingle sets.
        num_perm: ``k``, the number of hash functions (more = smaller error, ``~1/sqrt(k)``).
        ngram: words per shingle, for texts.
        seed: seeds :func:`make_permutations` when ``permutations`` is not given.
        permutations: ``(a, b)`` from :func:`make_permutations` (shared by every signature
            that will be compared).
    Returns:
        ``uint64[len(docs), num_perm]``; a document without shingles gets ``MAX_HASH`` everywhere.
    Raises:
        TypeError: if ``docs`` is not a sequence of strings or of sets.
        ValueError: for ``num_perm`` or ``ngram`` below 1, or ``a``/``b`` of the wrong shape or range.
    """
    if isinstance(docs, str) or not isinstance(docs, Sequence):
        raise TypeError(f"docs must be a sequence of strings or shingle sets, got {type(docs).__name__}")
    if permutations is None:
        a, b = make_permutations(num_perm, seed)
    else:
        a, b = (np.asarray(p) for p in permutations)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise ValueError(f"permutations must be two equal 1-D arrays, got shapes {a.shape} and {b.shape}")
        if a.dtype.kind not in "iu" or b.dtype.kind not in "iu" or a.min() < 1 or b.min() < 0 \
                or a.max() >= 1 << 32 or b.max() >= 1 << 32:
            raise ValueError("permutations must hold integers a in [1, 2**32) and b in [0, 2**32)")
        a, b = a.astype(np.uint64), b.astype(np.uint64)
    sigs = np.full((len(docs), len(a)), MAX_HASH, dtype=np.uint64)
    for d, doc in enumerate(docs):
        if isinstance(doc, str):
            sh = shingles(doc, ngram)
        elif isinstance(doc, (set, frozenset)):
            sh = doc
        else:
            raise TypeError(f"docs[{d}] must be a str or a set of shingles, got {type(doc).__name__}")
        if not sh:
            continue
        x = np.fromiter((_hash32(s) for s in sh), dtype=np.uint64, count=len(sh))  # [n_shingles]
        hashed = (x[:, None] * a[None, :] + b[None, :]) % MERSENNE_PRIME & MAX_HASH   # [n_shingles, num_perm]
        sigs[d] = hashed.min(axis=0)
    return sigs


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The fraction of hash functions whose minima agree: an unbiased estimate of Jaccard similarity."""
    sig_a, sig_b = np.asarray(sig_a), np.asarray(sig_b)
    if sig_a.shape != sig_b.shape or sig_a.ndim != 1:
        raise ValueError(f"signatures must be 1-D of equal length, got {sig_a.shape} and {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity ``|a ∩ b| / |a ∪ b|`` (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _area(f, lo: float, hi: float, n: int = 257) -> float:
    xs = np.linspace(lo, hi, n)
    ys = f(xs)
    return float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) / 2)  # trapezoid rule


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """Bands ``b`` and rows ``r`` (``b * r <= num_perm``) for a similarity ``threshold``.

    Minimises ``fp_weight * FP + fn_weight * FN``, where ``FP = ∫_0^t P(s) ds`` and
    ``FN = ∫_t^1 (1 - P(s)) ds`` with ``P(s) = 1 - (1 - s**r)**b``, the chance that documents
    of similarity ``s`` share a band (MMDS 3.4.2). Same rule as ``datasketch.MinHashLSH``.

    Raises:
        ValueError: if ``threshold`` is not in ``(0, 1)`` or ``num_perm < 2``.
    """
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    num_perm = _check_int("num_perm", num_perm, lo=2)
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _area(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
            fn = _area(lambda s: (1 - s ** r) ** b, threshold, 1.0)
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, whose signatures agree on all ``rows`` rows of at least one band.

    Band ``k`` covers columns ``k * rows .. (k + 1) * rows - 1``; each band is a dict from the
    band's values to the documents holding them, so the cost is linear plus the bucket sizes.

    Raises:
        ValueError: if ``signatures`` is not 2-D or ``bands * rows`` exceeds its width.
    """
    signatures = np.asarray(signatures)
    if signatures.ndim != 2:
        raise ValueError(f"signatures must be [n_docs, num_perm], got shape {signatures.shape}")
    bands, rows = _check_int("bands", bands), _check_int("rows", rows)
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm = {signatures.shape[1]}")
    pairs: set[tuple[int, int]] = set()
    for k in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = np.ascontiguousarray(signatures[:, k * rows:(k + 1) * rows])
        for d in range(len(block)):
            buckets[block[d].tobytes()].append(d)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    pairs.add((members[x], members[y]))
    return pairs


def near_duplicates(docs: Sequence[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 3,
                    seed: int = 0) -> list[tuple[int, int, float]]:
    """Pairs of documents whose estimated Jaccard similarity of word ``ngram``-shingles is >= ``threshold``.

    Signatures (:func:`minhash_signatures`), LSH candidates (:func:`lsh_candidates` with
    :func:`lsh_params`), then each candidate is kept if its signature agreement is at least
    ``threshold``. Documents without shingles (empty) are skipped.

    Returns:
        ``[(i, j, estimated_jaccard), ...]`` with ``i < j``, sorted by ``(i, j)``.
    Raises:
        TypeError: if ``docs`` is not a sequence of strings.
        ValueError: for ``threshold`` outside ``(0, 1)``, ``num_perm < 2`` or ``ngram < 1``.
    """
    docs = _check_docs(docs)
    bands, rows = lsh_params(threshold, num_perm)
    sets = [shingles(d, ngram) for d in docs]
    sigs = minhash_signatures(sets, num_perm, seed=seed)
    out = []
    for i, j in sorted(lsh_candidates(sigs, bands, rows)):
        if sets[i] and sets[j]:
            est = estimate_jaccard(sigs[i], sigs[j])
            if est >= threshold:
                out.append((i, j, est))
    return out


def duplicate_groups(pairs: Iterable[tuple[int, int] | tuple[int, int, float]], n: int) -> list[list[int]]:
    """Connected groups (size >= 2) of ``n`` items linked by ``pairs`` (union-find), each sorted.

    Keeping the first member of each group and dropping the rest deduplicates.

    >>> duplicate_groups([(0, 3), (3, 5), (1, 2)], 6)
    [[0, 3, 5], [1, 2]]
    """
    n = _check_int("n", n, lo=0)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        i, j = int(p[0]), int(p[1])
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair {(i, j)} is out of range for n={n}")
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for x in range(n):
        groups[find(x)].append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
