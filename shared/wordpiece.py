"""WordPiece (BERT's tokenizer): likelihood-scored merges, ``##`` pieces, greedy longest match.

WordPiece works on *words*, not on the whole byte stream:

1. **Pre-tokenise** like BERT (:func:`bert_pretokenize`): split on whitespace, and make every
   punctuation character a word of its own. The spaces themselves are thrown away.
2. **Pieces**: a word is spelled with pieces from the vocabulary. A piece that starts a word is
   written plainly (``"play"``); a piece that continues a word carries the prefix ``##``
   (``"##ing"``), so ``"playing" -> ["play", "##ing"]`` and ``"play ing"`` stay distinguishable.
3. **Encode** greedily (:func:`wordpiece_word`): take the longest vocabulary piece that starts the
   word, then the longest ``##`` piece that continues it, and so on. If at some point no piece
   matches, the *whole word* becomes ``[UNK]`` (there is no byte fallback).

**Training** starts from every character (first characters plainly, the others as ``##c``) and
repeatedly merges the adjacent pair ``(a, b)`` with the highest *likelihood score*::

    score(a, b) = count(a, b) / (count(a) * count(b))

where counts are occurrences in the training words weighted by word frequency. BPE would merge the
most *frequent* pair; dividing by the parts' counts prefers pairs whose parts rarely occur apart
(merging them raises the likelihood of the training data under a unigram model of the pieces the
most). Ties go to the smallest pair (comparing the strings). Merging ``"play"`` and ``"##ing"``
gives ``"playing"``; merging ``"##in"`` and ``"##g"`` gives ``"##ing"``.

Example::

    >>> tok = WordPieceTokenizer.train("hug " * 10 + "pug " * 5 + "pun " * 12 + "bun " * 4 + "hugs " * 5,
    ...                                vocab_size=14)
    >>> tok.vocab[8:]                    # the merges, in order; BPE would merge the frequent 'u'+'g' first
    ['##gs', '##ug', '##ugs', 'hugs', 'hug', '##un']
    >>> tok.tokenize("hugs bun mug")     # 'm' was never seen: the whole word is unknown
    ['hugs', 'b', '##un', '[UNK]']
    >>> tok.decode(tok.encode("hugs bun"))
    'hugs bun'

Sources: Schuster & Nakajima 2012, "Japanese and Korean Voice Search" (WordPiece); Wu et al. 2016
(GNMT, section 4.1); Devlin et al. 2019 (BERT); the encoder follows BERT's ``WordpieceTokenizer``
(google-research/bert ``tokenization.py``) and Hugging Face ``tokenizers``' ``models.WordPiece``,
which serves as the oracle in ``tests/test_wordpiece.py``. The training score follows the
Hugging Face course's WordPiece chapter (the ``tokenizers`` trainer itself ranks pairs like BPE).
"""

from __future__ import annotations

import heapq
import json
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from pathlib import Path

__all__ = ["WordPieceTokenizer", "bert_pretokenize", "is_punctuation", "wordpiece_word",
           "wordpiece_merges", "naive_wordpiece_merges", "merge_pieces", "UNK", "PREFIX"]

UNK = "[UNK]"
PREFIX = "##"
_FORMAT = "shared.wordpiece.WordPieceTokenizer/1"


def is_punctuation(ch: str) -> bool:
    """BERT's rule: ASCII symbols ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~`` and Unicode category P*.

    >>> [c for c in "a-b, c$d é!" if is_punctuation(c)]
    ['-', ',', '$', '!']
    """
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def bert_pretokenize(text: str) -> list[str]:
    """Split ``text`` into words like BERT: on whitespace, each punctuation character alone.

    Matches Hugging Face ``tokenizers.pre_tokenizers.BertPreTokenizer``.

    >>> bert_pretokenize("Hello, world!  It's 3.5")
    ['Hello', ',', 'world', '!', 'It', "'", 's', '3', '.', '5']

    Raises:
        TypeError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words: list[str] = []
    for chunk in text.split():
        start = 0
        for i, ch in enumerate(chunk):
            if is_punctuation(ch):
                if start < i:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


def wordpiece_word(word: str, vocab: Collection[str], unk_token: str = UNK,
                   max_input_chars_per_word: int = 100) -> list[str]:
    """Greedy longest-match-first pieces of one word, or ``[unk_token]`` if it cannot be spelled.

    >>> wordpiece_word("unaffable", {"un", "##aff", "##able", "a"})
    ['un', '##aff', '##able']
    >>> wordpiece_word("unzip", {"un", "##aff", "##able"})
    ['[UNK]']
    """
    if len(word) > max_input_chars_per_word:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:  # shrink from the right until the substring is a piece
            piece = word[start:end] if start == 0 else PREFIX + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:  # nothing matched: BERT gives up on the whole word
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


def merge_pieces(a: str, b: str) -> str:
    """The piece made by merging ``a`` and ``b``: ``b`` loses its ``##`` (``"##in" + "##g" -> "##ing"``)."""
    return a + b[len(PREFIX):]


def _spell(word: str) -> list[str]:
    """A word as its initial pieces: ``"hug" -> ["h", "##u", "##g"]``."""
    return [word[0]] + [PREFIX + c for c in word[1:]]


def _score(pair_count: int, count_a: int, count_b: int) -> float:
    return pair_count / (count_a * count_b)


def naive_wordpiece_merges(word_counts: dict[str, int], n_pieces: int,
                           min_frequency: int = 1) -> list[tuple[str, str]]:
    """The textbook loop: recount every piece and pair after every merge (slow; the reference).

    Merges until ``n_pieces`` distinct new pieces exist (two merges can make the same piece:
    ``"a" + "##bc"`` and ``"ab" + "##c"``) or no pair is left. Returns the merged pairs
    ``(a, b)`` in the order learned. Best pair = highest
    ``count(a, b) / (count(a) * count(b))`` among the pairs that occur at least
    ``min_frequency`` times; ties go to the smallest ``(a, b)``.
    """
    words = {w: _spell(w) for w in word_counts}
    merges: list[tuple[str, str]] = []
    created: set[str] = set()
    while len(created) < n_pieces:
        piece_counts, pair_counts = Counter(), Counter()
        for w, c in word_counts.items():
            pieces = words[w]
            for p in pieces:
                piece_counts[p] += c
            for pair in zip(pieces, pieces[1:]):
                pair_counts[pair] += c
        eligible = [p for p, n in pair_counts.items() if n >= min_frequency]
        if not eligible:
            break
        best = min(eligible, key=lambda p: (-_score(pair_counts[p], piece_counts[p[0]], piece_counts[p[1]]), p))
        merges.append(best)
        new = merge_pieces(*best)
        created.add(new)
        for w, pieces in words.items():
            out, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            words[w] = out
    return merges


def wordpiece_merges(word_counts: dict[str, int], n_pieces: int, min_frequency: int = 1) -> list[tuple[str, str]]:
    """The same merges as :func:`naive_wordpiece_merges`, computed incrementally (fast).

    ``pair_counts``/``piece_counts`` are kept up to date; ``where[pair]`` is the set of words
    holding the pair, so a merge only touches those words. The catch compared with BPE
    (``shared.tokenizer.incremental_merges``): a merge changes ``count(a)`` and ``count(b)``, hence
    the score of *every* pair that contains ``a``, ``b`` or the new piece, even in words the merge
    never touched. ``pairs_with[piece]`` finds those pairs so that each gets a fresh heap entry;
    a popped entry whose score is no longer current is stale and skipped.

    Args:
        word_counts: ``{word: count}``, each distinct pre-token once.
        n_pieces: how many distinct new pieces to make; stops early when no pair is left.
        min_frequency: only pairs that occur at least this often may merge (as the
            ``min_frequency`` of Hugging Face's trainers). The likelihood score favours pairs of
            rare pieces; a floor keeps it from spending the vocabulary on names seen a few times.
    Returns:
        the merged pairs ``(a, b)`` in the order learned.
    """
    words = [_spell(w) for w in word_counts]
    counts = list(word_counts.values())
    piece_counts: Counter = Counter()
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    pairs_with: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for i, (pieces, c) in enumerate(zip(words, counts)):
        for p in pieces:
            piece_counts[p] += c
        for pair in zip(pieces, pieces[1:]):
            pair_counts[pair] += c
            where[pair].add(i)
            pairs_with[pair[0]].add(pair)
            pairs_with[pair[1]].add(pair)

    def entry(pair):
        return (-_score(pair_counts[pair], piece_counts[pair[0]], piece_counts[pair[1]]), pair)

    heap = [entry(p) for p in pair_counts]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    created: set[str] = set()
    while len(created) < n_pieces and heap:
        neg_score, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) <= 0 or entry(pair)[0] != neg_score:
            continue  # stale: the pair is gone or its score changed after this entry was pushed
        if pair_counts[pair] < min_frequency:
            continue  # too rare; if its count grows again it is re-pushed with the pairs it touches
        merges.append(pair)
        a, b = pair
        new = merge_pieces(a, b)
        created.add(new)
        touched: set[tuple[str, str]] = set()
        for i in where.pop(pair):
            pieces, c = words[i], counts[i]
            out, j = [], 0
            while j < len(pieces):
                if j + 1 < len(pieces) and pieces[j] == a and pieces[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(pieces[j])
                    j += 1
            if len(out) == len(pieces):
                continue
            for p in pieces:
                piece_counts[p] -= c
            for p in zip(pieces, pieces[1:]):
                pair_counts[p] -= c
                touched.add(p)
            for p in out:
                piece_counts[p] += c
            for p in zip(out, out[1:]):
                pair_counts[p] += c
                where[p].add(i)
                pairs_with[p[0]].add(p)
                pairs_with[p[1]].add(p)
                touched.add(p)
            words[i] = out
        for p in touched:
            if pair_counts[p] <= 0:
                del pair_counts[p]
                where.pop(p, None)
                pairs_with[p[0]].discard(p)
                pairs_with[p[1]].discard(p)
        rescored = touched | pairs_with[a] | pairs_with[b] | pairs_with[new]
        for p in rescored:
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, entry(p))
    return merges


class WordPieceTokenizer:
    """A WordPiece tokenizer: a list of pieces (``##`` marks a continuation), greedy encoding.

    Ids are positions in :attr:`vocab`: special tokens first (``[UNK]`` = 0 for a trained
    tokenizer), then the characters seen in training (sorted), then the merges in the order learned.

    Args:
        vocab: the pieces, in id order (a list), or ``{piece: id}`` with ids ``0 .. n - 1``.
        unk_token: the piece for words that cannot be spelled; must be in ``vocab``.
        max_input_chars_per_word: longer words become ``unk_token`` (BERT and HF: 100).
    Raises:
        TypeError: if ``vocab`` is not a list/tuple or dict of strings.
        ValueError: on duplicate or empty pieces, non-contiguous ids, a missing ``unk_token`` or
            ``max_input_chars_per_word < 1``.
    """

    def __init__(self, vocab: list[str] | dict[str, int], unk_token: str = UNK, max_input_chars_per_word: int = 100):
        if isinstance(vocab, dict):
            if sorted(vocab.values()) != list(range(len(vocab))):
                raise ValueError("vocab ids must be exactly 0 .. len(vocab) - 1")
            vocab = sorted(vocab, key=vocab.__getitem__)
        if not isinstance(vocab, (list, tuple)) or not all(isinstance(p, str) for p in vocab):
            raise TypeError("vocab must be a list of piece strings or a {piece: id} dict")
        if any(p in ("", PREFIX) for p in vocab):
            raise ValueError(f"vocab holds an empty piece ('' or {PREFIX!r})")
        if len(set(vocab)) != len(vocab):
            dup = next(p for p, n in Counter(vocab).items() if n > 1)
            raise ValueError(f"vocab holds the piece {dup!r} twice")
        if unk_token not in vocab:
            raise ValueError(f"unk_token {unk_token!r} is not in the vocab")
        if isinstance(max_input_chars_per_word, bool) or not isinstance(max_input_chars_per_word, int) \
                or max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be an integer >= 1, got {max_input_chars_per_word!r}")
        self.vocab: list[str] = list(vocab)
        self.token_to_id: dict[str, int] = {p: i for i, p in enumerate(self.vocab)}
        self.unk_token, self.unk_id = unk_token, self.token_to_id[unk_token]
        self.max_input_chars_per_word = max_input_chars_per_word
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Collection[str] = (UNK,),
              naive: bool = False, min_frequency: int = 1) -> WordPieceTokenizer:
        """Learn a vocabulary of ``vocab_size`` pieces from ``text`` (specials and characters included).

        Args:
            text: training text, pre-tokenised with :func:`bert_pretokenize`.
            vocab_size: the final vocabulary size.
            special_tokens: pieces that get the first ids; must include ``[UNK]``.
            naive: use :func:`naive_wordpiece_merges` (slow reference); same result.
            min_frequency: only pairs seen at least this often merge (1: every pair).
        Raises:
            TypeError: if ``text`` is not a ``str``.
            ValueError: if ``text`` has no words, ``[UNK]`` is not among ``special_tokens``,
                ``vocab_size`` cannot hold the specials plus every character of the text, or
                ``min_frequency`` is not an int >= 1.
        Warns:
            if the text runs out of pairs before ``vocab_size`` (check :attr:`vocab_size`).
        """
        import warnings
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"vocab_size must be an integer, got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
        specials = list(dict.fromkeys(special_tokens))
        if UNK not in specials:
            raise ValueError(f"special_tokens must include {UNK!r}, got {specials}")
        word_counts = Counter(bert_pretokenize(text))
        if not word_counts:
            raise ValueError("text holds no words to train on")
        alphabet = sorted({p for w in word_counts for p in _spell(w)} - set(specials))
        base = len(specials) + len(alphabet)
        if vocab_size < base:
            raise ValueError(f"vocab_size={vocab_size} is too small: the {len(specials)} special token(s) and the "
                             f"{len(alphabet)} characters of the text need vocab_size >= {base}")
        merges = (naive_wordpiece_merges if naive else wordpiece_merges)(dict(word_counts), vocab_size - base,
                                                                         min_frequency)
        vocab = specials + alphabet
        seen = set(vocab)
        for a, b in merges:  # two different merges can make the same piece ("a"+"##bc", "ab"+"##c")
            new = merge_pieces(a, b)
            if new not in seen:
                vocab.append(new)
                seen.add(new)
        if len(vocab) < vocab_size:
            warnings.warn(f"the training text ran out of pairs after {len(merges)} merges; "
                          f"vocab_size is {len(vocab)}, not {vocab_size}", stacklevel=2)
        tok = cls(vocab)
        tok.merges = merges
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """``text`` as pieces: :func:`bert_pretokenize`, then :func:`wordpiece_word` per word.

        Raises:
            TypeError: if ``text`` is not a ``str``.
        """
        out: list[str] = []
        cache = self._cache
        for word in bert_pretokenize(text):
            pieces = cache.get(word)
            if pieces is None:
                pieces = wordpiece_word(word, self.token_to_id, self.unk_token, self.max_input_chars_per_word)
                if len(cache) < 200_000:
                    cache[word] = pieces
            out += pieces
        return out

    def encode(self, text: str) -> list[int]:
        """``text`` as ids. Raises ``TypeError`` if ``text`` is not a ``str``."""
        ids = self.token_to_id
        return [ids[p] for p in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text: ``##`` pieces glued to the previous piece, words joined by one space.

        Not an inverse of :meth:`encode`: the original spacing (none before ``","``, newlines,
        runs of spaces) and any word that became ``[UNK]`` are lost. Same output as
        ``tokenizers.decoders.WordPiece(cleanup=False)``.

        Raises:
            ValueError: on an id outside ``0 .. vocab_size - 1``.
        """
        out = []
        for i in ids:
            if isinstance(i, bool) or not 0 <= int(i) < len(self.vocab) or int(i) != i:
                raise ValueError(f"token id {i!r} is not in the vocabulary (size {self.vocab_size})")
            piece = self.vocab[int(i)]
            if piece.startswith(PREFIX) and out:
                out.append(piece[len(PREFIX):])
            else:
                out.append((" " if out else "") + piece)
        return "".join(out)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (atomically)."""
        path = Path(path)
        data = {"format": _FORMAT, "vocab": self.vocab, "unk_token": self.unk_token,
                "max_input_chars_per_word": self.max_input_chars_per_word}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordPieceTokenizer:
        """Read a tokenizer written by :meth:`save`. Raises ``ValueError`` for any other file."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved WordPieceTokenizer (expected format {_FORMAT!r})")
        return cls(data["vocab"], data["unk_token"], data["max_input_chars_per_word"])

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, unk_token={self.unk_token!r})"
