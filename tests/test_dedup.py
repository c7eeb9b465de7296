"""Tests for shared.dedup: MinHash and LSH banding against datasketch (test-only oracle)."""

import doctest
import random

import numpy as np
import pytest

import shared.dedup as D
from shared.dedup import (duplicate_groups, estimate_jaccard, exact_duplicates, jaccard, lsh_candidates,
                          lsh_params, make_permutations, minhash_signatures, near_duplicates, shingles)

datasketch = pytest.importorskip("datasketch")


def _docs(n=60, seed=0):
    """Random 'documents' plus planted near-duplicates (a few words changed) and exact copies."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    docs = [" ".join(rng.choice(vocab) for _ in range(80)) for _ in range(n)]
    planted = []
    for k in range(0, n, 6):
        words = docs[k].split()
        for _ in range(2):  # change 2 of 80 words: Jaccard of 3-gram sets ~0.86
            words[rng.randrange(len(words))] = rng.choice(vocab)
        docs.append(" ".join(words))
        planted.append((k, len(docs) - 1))
    docs.append(docs[1].upper())  # an exact duplicate after case folding
    return docs, planted


def test_doctests():
    assert doctest.testmod(D).failed == 0


def test_signatures_equal_datasketch_for_same_permutations():
    docs, _ = _docs(12)
    a, b = make_permutations(64, seed=3)
    ours = minhash_signatures(docs, num_perm=64, ngram=3, permutations=(a, b))
    for d, doc in enumerate(docs):
        m = datasketch.MinHash(num_perm=64, scheme="legacy", permutations=(a, b))
        m.update_batch([s.encode("utf-8") for s in shingles(doc, 3)])
        np.testing.assert_array_equal(ours[d], m.hashvalues)


def test_jaccard_estimates_close_to_truth_and_to_datasketch_defaults():
    docs, planted = _docs(30)
    sets = [shingles(d) for d in docs]
    sigs = minhash_signatures(sets, num_perm=256, seed=0)
    pairs = planted + [(0, 1), (2, 3), (4, 7)]
    for i, j in pairs:
        true = jaccard(sets[i], sets[j])
        ours = estimate_jaccard(sigs[i], sigs[j])
        mi, mj = (datasketch.MinHash(num_perm=256) for _ in range(2))  # datasketch's own default scheme
        mi.update_batch([s.encode() for s in sets[i]])
        mj.update_batch([s.encode() for s in sets[j]])
        sd = max(np.sqrt(true * (1 - true) / 256), 0.02)
        assert abs(ours - true) < 4 * sd, (i, j, ours, true)
        assert abs(ours - mi.jaccard(mj)) < 6 * sd, (i, j, ours, mi.jaccard(mj))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8, 0.9])
def test_lsh_params_match_datasketch(threshold):
    from datasketch.lsh import _optimal_param
    assert lsh_params(threshold, 128) == _optimal_param(threshold, 128, 0.5, 0.5)


def test_lsh_candidates_equal_datasketch():
    docs, _ = _docs(60)
    a, b = make_permutations(128, seed=0)
    sigs = minhash_signatures(docs, permutations=(a, b))
    lsh = datasketch.MinHashLSH(threshold=0.5, num_perm=128)
    bands, rows = lsh_params(0.5, 128)
    assert (lsh.b, lsh.r) == (bands, rows)
    mins = []
    for d in range(len(docs)):
        m = datasketch.MinHash(num_perm=128, scheme="legacy", hashvalues=sigs[d], permutations=(a, b))
        lsh.insert(d, m)
        mins.append(m)
    theirs = {(min(d, e), max(d, e)) for d in range(len(docs)) for e in lsh.query(mins[d]) if e != d}
    assert lsh_candidates(sigs, bands, rows) == theirs


def test_near_duplicates_finds_planted_pairs_only():
    docs, planted = _docs(60)
    found = {(i, j) for i, j, _ in near_duplicates(docs, threshold=0.7)}
    assert set(planted) <= found
    assert (1, len(docs) - 1) in found  # the upper-cased copy: shingles are lower-cased
    sets = [shingles(d) for d in docs]
    for i, j in found:  # no false positives far below the threshold
        assert jaccard(sets[i], sets[j]) > 0.5


def test_exact_duplicates_and_groups():
    docs = ["Sigh no more, ladies", "sigh  no MORE, ladies", "", "  ", "other", "Sigh no more, ladies"]
    assert exact_duplicates(docs) == [[0, 1, 5]]
    assert exact_duplicates(docs, normalize=False) == [[0, 5]]
    assert duplicate_groups([(0, 1), (1, 2), (4, 5)], 6) == [[0, 1, 2], [4, 5]]


def test_lsh_candidate_probability_is_the_s_curve():
    # Pairs of random sets with Jaccard ~0.5; with b=20, r=5 the chance to share a band is
    # 1 - (1 - 0.5**5)**20 = 0.47.
    rng = np.random.default_rng(0)
    hits, n = 0, 150
    for t in range(n):
        common = {f"c{t}_{i}" for i in range(100)}
        a = common | {f"a{t}_{i}" for i in range(50)}
        b = common | {f"b{t}_{i}" for i in range(50)}
        sigs = minhash_signatures([a, b], num_perm=100, seed=int(rng.integers(1 << 30)))
        hits += bool(lsh_candidates(sigs, 20, 5))
    p = 1 - (1 - 0.5 ** 5) ** 20
    assert abs(hits / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_bad_input():
    with pytest.raises(TypeError, match="docs must be a sequence"):
        near_duplicates("one string")
    with pytest.raises(TypeError, match=r"docs\[1\] must be a str"):
        exact_duplicates(["a", 3])
    with pytest.raises(ValueError, match="threshold must be in"):
        near_duplicates(["a b c"], threshold=1.5)
    with pytest.raises(ValueError, match="ngram must be an integer"):
        shingles("a b", ngram=0)
    with pytest.raises(ValueError, match="num_perm must be an integer"):
        minhash_signatures(["a"], num_perm=0)
    with pytest.raises(ValueError, match="permutations must hold"):
        minhash_signatures(["a"], permutations=(np.zeros(4, np.uint64), np.zeros(4, np.uint64)))
    with pytest.raises(ValueError, match="equal 1-D"):
        minhash_signatures(["a"], permutations=(np.ones(4, np.uint64), np.ones(3, np.uint64)))
    with pytest.raises(TypeError, match=r"docs\[0\] must be a str or a set"):
        minhash_signatures([3])
    with pytest.raises(ValueError, match="exceeds num_perm"):
        lsh_candidates(np.zeros((3, 10), np.uint64), 4, 3)
    with pytest.raises(ValueError, match="signatures must be"):
        lsh_candidates(np.zeros(10, np.uint64), 2, 3)
    with pytest.raises(ValueError, match="out of range"):
        duplicate_groups([(0, 9)], 3)
    with pytest.raises(ValueError, match="equal length"):
        estimate_jaccard(np.zeros(3), np.zeros(4))
