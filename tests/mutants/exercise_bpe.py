"""Mutants of the Chapter 1 BPE exercise: the mistakes learners make, and correct alternatives."""

SOLUTION = "ch01_tokenization/solutions/exercise_bpe.ipynb"

MUTANTS = {
    "get_stats skips overlapping pairs": dict(expect="overlapping", code='''
def get_stats(ids, counts=None):
    counts = {} if counts is None else counts
    i = 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1   # "aaa" counted once
    return counts
'''),
    "get_stats ignores the counts it is given": dict(expect="must add to the `counts` dict", code='''
def get_stats(ids, counts=None):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts
'''),
    "merge does not skip past a replaced pair": dict(expect="skip past", code='''
def merge(ids, pair, idx):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(idx)
        else:
            out.append(ids[i])
    return out
'''),
    "merge edits its input in place": dict(expect="new list", code='''
def merge(ids, pair, idx):
    i = 0
    while i < len(ids) - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            ids[i:i + 2] = [idx]
        i += 1
    return ids
'''),
    "ties go to the largest pair": dict(expect="tie", code='''
def train_merges(chunks, n_merges):
    merges = {}
    for k in range(n_merges):
        stats = {}
        for ids in chunks:
            get_stats(ids, stats)
        if not stats:
            break
        pair = max(stats, key=lambda p: (stats[p], p))
        chunks = [merge(ids, pair, 256 + k) for ids in chunks]
        merges[pair] = 256 + k
    return merges
'''),
    "ties go to the pair seen first (max by count only)": dict(expect="tie", code='''
def train_merges(chunks, n_merges):
    merges = {}
    for k in range(n_merges):
        stats = {}
        for ids in chunks:
            get_stats(ids, stats)
        if not stats:
            break
        pair = max(stats, key=stats.get)
        chunks = [merge(ids, pair, 256 + k) for ids in chunks]
        merges[pair] = 256 + k
    return merges
'''),
    "training never stops early": dict(expect="stop early", code='''
def train_merges(chunks, n_merges):
    merges = {}
    for k in range(n_merges):
        stats = {}
        for ids in chunks:
            get_stats(ids, stats)
        pair = min(stats, key=lambda p: (-stats[p], p))
        chunks = [merge(ids, pair, 256 + k) for ids in chunks]
        merges[pair] = 256 + k
    return merges
'''),
    "merge ids start at 255 (off by one)": dict(expect="256 + k", code='''
def train_merges(chunks, n_merges):
    merges = {}
    for k in range(n_merges):
        stats = {}
        for ids in chunks:
            get_stats(ids, stats)
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        chunks = [merge(ids, pair, 255 + k) for ids in chunks]
        merges[pair] = 255 + k
    return merges
'''),
    "encoding merges the leftmost learned pair": dict(expect="leftmost", code='''
def encode_chunk(ids, merges):
    ids = list(ids)
    while True:
        for a, b in zip(ids, ids[1:]):
            if (a, b) in merges:
                ids = merge(ids, (a, b), merges[(a, b)])
                break
        else:
            return ids
'''),
    "encoding merges the most frequent learned pair": dict(expect="learned first", code='''
def encode_chunk(ids, merges):
    ids = list(ids)
    while len(ids) >= 2:
        stats = {p: n for p, n in get_stats(ids).items() if p in merges}
        if not stats:
            break
        pair = max(stats, key=stats.get)
        ids = merge(ids, pair, merges[pair])
    return ids
'''),
}

ALTERNATIVES = {
    "Counter and a skip flag": '''
from collections import Counter

def get_stats(ids, counts=None):
    counts = {} if counts is None else counts
    for pair, n in Counter(zip(ids, ids[1:])).items():
        counts[pair] = counts.get(pair, 0) + n
    return counts

def merge(ids, pair, idx):
    out, skip = [], False
    for a, b in zip(ids, list(ids[1:]) + [None]):
        if skip:
            skip = False
        elif (a, b) == tuple(pair):
            out.append(idx)
            skip = True
        else:
            out.append(a)
    return out
''',
    "sorted() training and recursive encoding": '''
def train_merges(chunks, n_merges):
    merges = {}
    chunks = [list(c) for c in chunks]
    while len(merges) < n_merges:
        stats = {}
        for c in chunks:
            get_stats(c, stats)
        if not stats:
            return merges
        best = sorted(stats.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        new_id = 256 + len(merges)
        chunks = [merge(c, best, new_id) for c in chunks]
        merges[best] = new_id
    return merges

def encode_chunk(ids, merges):
    learned = [p for p in zip(ids, ids[1:]) if p in merges]
    if not learned:
        return list(ids)
    best = min(learned, key=merges.__getitem__)
    return encode_chunk(merge(list(ids), best, merges[best]), merges)
''',
}
