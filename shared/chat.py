"""Chat fine-tuning (Chapter 7b, part 3): ChatML role tokens, multi-turn data, assistant-only loss.

A chat model reads a conversation as one token sequence. ChatML (OpenAI 2023; used by Qwen,
SmolLM2 and many open models) marks every message with two **special tokens**::

    <|im_start|>user
    What is the last word of the input?
    love king night<|im_end|>
    <|im_start|>assistant
    night<|im_end|>

* :func:`add_chat_tokens` gives a course :class:`~shared.tokenizer.BPETokenizer` the two tokens
  as new special ids (so no text can produce them by accident), and
  :func:`resize_token_embeddings` gives the model matching embedding rows, initialised to the
  mean of the existing rows (Hewitt 2021, "Initializing new word embeddings for pretrained
  language models"), so the new tokens start as an "average" token and not as noise.
* :func:`encode_chat` returns the ids and the **labels**: the token itself where the assistant
  speaks (its content and its closing ``<|im_end|>``, so the model learns to stop), ``-100``
  everywhere else (system and user turns, every role header). The loss then teaches answering
  only, in every turn of a multi-turn conversation (as in HF TRL's ``assistant_only_loss``).
* :func:`make_conversations` builds two-turn conversations whose second question can only be
  answered from the first turn, so a model must use the history.
* :func:`show_loss_mask` draws which tokens carry loss.

The rendering is :func:`shared.llama.chat_prompt` (the template SmolLM2 ships), without its
default system prompt.
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence

import torch
from torch import nn

from shared.generate import generate, left_pad
from shared.instruct import IGNORE_INDEX, _pad_rows, generate_instruction_data
from shared.llama import chat_prompt
from shared.tokenizer import BPETokenizer

__all__ = ["IM_START", "IM_END", "CHAT_TOKENS", "ROLES", "add_chat_tokens", "resize_token_embeddings",
           "render_chat", "encode_chat", "chat_collate", "make_conversations", "show_loss_mask",
           "chat_generate", "chat_exact_match"]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")

#: Follow-up questions about the first turn's input (a list of words).
FOLLOW_UPS = {
    "first_word": ("And what was its first word?", lambda words: words[0]),
    "word_count": ("How many words did it have?", lambda words: str(len(words))),
}


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with a role in {ROLES} and a string content, got {m!r:.80}")
        for tok in CHAT_TOKENS:
            if tok in m["content"]:
                raise ValueError(f"messages[{i}] content contains the special token {tok!r}")


def add_chat_tokens(tokenizer: BPETokenizer, tokens: Sequence[str] = CHAT_TOKENS) -> BPETokenizer:
    """A copy of ``tokenizer`` with ``tokens`` appended as special tokens (ids ``vocab_size, ...``).

    The merges and existing special tokens keep their ids, so a model trained with the old
    tokenizer reads old text exactly as before. Tokens it already has are kept as they are.

    >>> tok = BPETokenizer.train("to be or not to be", vocab_size=260)
    >>> chat = add_chat_tokens(tok)
    >>> chat.vocab_size - tok.vocab_size, chat.special_tokens[IM_END]
    (2, 261)

    Raises:
        TypeError: if ``tokenizer`` is not a course ``BPETokenizer`` or ``tokens`` is a string.
        ValueError: if a token is empty.
    """
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"tokenizer must be a shared.tokenizer.BPETokenizer, got {type(tokenizer).__name__}")
    if isinstance(tokens, str):
        raise TypeError(f"tokens must be a sequence of strings, not the string {tokens!r}")
    special = dict(tokenizer.special_tokens)
    for t in tokens:
        if not isinstance(t, str) or not t:
            raise ValueError(f"tokens must be non-empty strings, got {t!r}")
        if t not in special:
            special[t] = tokenizer.vocab_size + len(special) - len(tokenizer.special_tokens)
    return BPETokenizer(tokenizer.merges, special, tokenizer.pattern)


@torch.no_grad()
def resize_token_embeddings(model: nn.Module, vocab_size: int) -> nn.Module:
    """Grow ``model.tok_emb`` (and a tied ``lm_head``) to ``vocab_size`` rows, in place.

    The new rows are the mean of the old ones (Hewitt 2021): with tied weights the new tokens
    then start with a logit close to the average one, instead of a random vector that a
    small model could predict everywhere. ``model.cfg.vocab_size`` is updated.

    Args:
        model: a course ``GPTModel`` (``tok_emb``, ``lm_head``, ``cfg``).
        vocab_size: the new size, ``>= model.cfg.vocab_size``.
    Returns:
        ``model``.
    Raises:
        TypeError: if ``model`` has no ``tok_emb``/``lm_head``/``cfg``.
        ValueError: if ``vocab_size`` is not an int at least the current size.
    """
    if not all(hasattr(model, a) for a in ("tok_emb", "lm_head", "cfg")):
        raise TypeError(f"model must be a course GPTModel with tok_emb, lm_head and cfg, got {type(model).__name__}")
    old = model.tok_emb.weight                                       # [V, C]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < old.size(0):
        raise ValueError(f"vocab_size must be an int >= the current {old.size(0)}, got {vocab_size!r}")
    tied = model.lm_head.weight is old
    new = nn.Embedding(vocab_size, old.size(1), device=old.device, dtype=old.dtype)
    new.weight[:old.size(0)] = old
    new.weight[old.size(0):] = old.mean(dim=0)
    new.weight.requires_grad_(old.requires_grad)
    model.tok_emb = new
    if tied:
        model.lm_head.weight = model.tok_emb.weight
    else:
        head = nn.Linear(old.size(1), vocab_size, bias=False, device=old.device, dtype=old.dtype)
        head.weight[:old.size(0)] = model.lm_head.weight
        head.weight[old.size(0):] = model.lm_head.weight.mean(dim=0)
        model.lm_head = head
    model.cfg.vocab_size = vocab_size
    return model


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """ChatML text of ``messages`` (no default system prompt): ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.

    >>> render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'

    Raises:
        ValueError: for an empty conversation, an unknown role or a content with a special token.
    """
    _check_messages(messages)
    return chat_prompt(list(messages), add_generation_prompt=add_generation_prompt, default_system=None)


def _special_id(tokenizer, token: str) -> int:
    if token not in tokenizer.special_tokens:
        raise ValueError(f"tokenizer has no special token {token!r}; use add_chat_tokens(tokenizer) first")
    return tokenizer.special_tokens[token]


def encode_chat(tokenizer: BPETokenizer, messages: Sequence[dict],
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """``(ids, labels)`` of a conversation: labels are the ids on assistant tokens, ``-100`` elsewhere.

    Each message is encoded piece by piece (header, content, ``<|im_end|>``, newline), so the
    mask follows the pieces exactly; the pieces meet at special tokens and newlines, where the
    GPT-2 split pattern cuts anyway, so ``ids`` equal the encoding of :func:`render_chat`'s text.
    Trained (``labels != -100``): the content of every assistant message and its ``<|im_end|>``.

    Returns:
        ``ids`` and ``labels``, two lists of the same length (labels are *not* shifted; see
        :func:`chat_collate`).
    Raises:
        ValueError: as :func:`render_chat`, or if the tokenizer lacks the ChatML tokens.
    """
    _check_messages(messages)
    start, end = _special_id(tokenizer, IM_START), _special_id(tokenizer, IM_END)
    nl = tokenizer.encode("\n")
    ids: list[int] = []
    labels: list[int] = []

    def put(piece: list[int], train: bool) -> None:
        ids.extend(piece)
        labels.extend(piece if train else [IGNORE_INDEX] * len(piece))

    for m in messages:
        train = m["role"] == "assistant"
        put([start] + tokenizer.encode(m["role"] + "\n"), False)
        put(tokenizer.encode(m["content"]) + [end], train)
        put(nl, False)
    if add_generation_prompt:
        put([start] + tokenizer.encode("assistant\n"), False)
    return ids, labels


def chat_collate(batch: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                 max_length: int | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad ``(ids, labels)`` pairs into next-token tensors: ``inputs = ids[:-1]``, ``targets = labels[1:]``.

    Inputs are right-padded with ``pad_id``, targets with ``-100``; sequences are cut to
    ``max_length + 1`` tokens first. Same contract as :func:`shared.instruct.instruction_collate`.

    Returns:
        ``(inputs [B, T], targets [B, T], attention_mask [B, T])``, ``torch.long``.
    Raises:
        ValueError: for an empty batch, ids and labels of different lengths, fewer than 2
            tokens, or ``max_length < 1``.
    """
    if not batch:
        raise ValueError("empty batch")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    rows = []
    for i, (ids, labels) in enumerate(batch):
        if len(ids) != len(labels):
            raise ValueError(f"example {i}: {len(ids)} ids but {len(labels)} labels")
        ids, labels = list(ids), list(labels)
        if max_length is not None:
            ids, labels = ids[:max_length + 1], labels[:max_length + 1]
        if len(ids) < 2:
            raise ValueError(f"example {i} has {len(ids)} token(s); need at least 2")
        rows.append((ids[:-1], labels[1:]))
    return _pad_rows(rows, pad_id, IGNORE_INDEX, device)


def make_conversations(n: int, seed: int = 0, system: str | None = None) -> list[dict]:
    """``n`` two-turn conversations ``{"messages", "task", "follow_up"}`` with checkable answers.

    Turn 1 is a word task of :func:`shared.instruct.generate_instruction_data` (reverse,
    count, last word) with its input in the user message. Turn 2 asks about that input
    (:data:`FOLLOW_UPS`: its first word, or how many words it had) without repeating it, so
    it can only be answered by reading the history. Deterministic for a ``seed``.

    Raises:
        ValueError: if ``n < 1`` (and as ``generate_instruction_data``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = random.Random(seed)
    records = generate_instruction_data(n, seed=seed, tasks=("reverse_words", "count_words", "last_word"))
    out = []
    for r in records:
        kind = rng.choice(sorted(FOLLOW_UPS))
        question, answer_fn = FOLLOW_UPS[kind]
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": f"{r['instruction']}\n{r['input']}"},
            {"role": "assistant", "content": r["output"]},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer_fn(r["input"].split())},
        ]
        out.append({"messages": messages, "task": r["task"], "follow_up": kind})
    return out


def show_loss_mask(tokenizer, ids: Sequence[int], labels: Sequence[int], as_html: bool = False) -> str:
    """Draw which tokens carry loss: trained tokens in ``[[...]]`` (or green in HTML), one token per piece.

    >>> tok = add_chat_tokens(BPETokenizer.train("hello", vocab_size=257))
    >>> ids, labels = encode_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    >>> print(show_loss_mask(tok, ids, labels))
    <|im_start|>user
    hi<|im_end|>
    <|im_start|>assistant
    [[yo<|im_end|>]]
    <BLANKLINE>

    Raises:
        ValueError: if ``ids`` and ``labels`` differ in length.
    """
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    parts = []
    for i, lab in zip(ids, labels):
        text = tokenizer.decode([i])
        if as_html:
            style = "background:#b7e4b0" if lab != IGNORE_INDEX else "color:#888"
            parts.append(f'<span style="{style};border:1px solid #ddd">{html.escape(text).replace(chr(10), "⏎<br>")}</span>')
        else:
            parts.append(f"[[{text}]]" if lab != IGNORE_INDEX else text)
    if as_html:
        return "<div style='font-family:monospace;line-height:1.8'>" + "".join(parts) + "</div>"
    return "".join(parts).replace("]][[", "")


@torch.no_grad()
def chat_generate(model: nn.Module, tokenizer, messages_batch: Sequence[Sequence[dict]], max_new_tokens: int = 12,
                  batch_size: int = 32) -> list[str]:
    """Greedy assistant replies to each conversation (which ends with a user turn), up to ``<|im_end|>``.

    Prompts are :func:`encode_chat` with the generation prompt, cut from the left to fit the
    context, left-padded and decoded with ``shared.generate.generate`` (temperature 0).

    Raises:
        ValueError: if ``messages_batch`` is empty (and as :func:`encode_chat`).
    """
    if not messages_batch:
        raise ValueError("messages_batch must hold at least one conversation")
    end = _special_id(tokenizer, IM_END)
    keep = max(1, model.cfg.context_length - max_new_tokens)
    prompts = [encode_chat(tokenizer, m, add_generation_prompt=True)[0][-keep:] for m in messages_batch]
    replies = []
    for s in range(0, len(prompts), batch_size):
        idx, mask = left_pad(prompts[s:s + batch_size], pad_id=end)
        out = generate(model, idx, max_new_tokens, temperature=0.0, eos_id=end, attention_mask=mask)
        for row in out[:, idx.size(1):].tolist():
            replies.append(tokenizer.decode(row[:row.index(end)] if end in row else row).strip())
    return replies


def chat_exact_match(model: nn.Module, tokenizer, conversations: Sequence[dict],
                     max_new_tokens: int = 12) -> dict[int, list[bool]]:
    """Exact match per assistant turn: ``{turn: [correct, ...]}`` (turn 1, 2, ...).

    For turn ``k`` the model sees the conversation up to the ``k``-th user message, with the
    *reference* answers in earlier turns (teacher forcing), so turn 2 measures the use of the
    history and not the luck of turn 1.

    Raises:
        ValueError: if ``conversations`` is empty.
    """
    if not conversations:
        raise ValueError("conversations must not be empty")
    results: dict[int, list[bool]] = {}
    n_turns = max(sum(m["role"] == "assistant" for m in c["messages"]) for c in conversations)
    for k in range(n_turns):
        prompts, golds = [], []
        for c in conversations:
            at = [i for i, m in enumerate(c["messages"]) if m["role"] == "assistant"]
            if k < len(at):
                prompts.append(c["messages"][:at[k]])
                golds.append(c["messages"][at[k]]["content"].strip())
        replies = chat_generate(model, tokenizer, prompts, max_new_tokens)
        results[k + 1] = [r == g for r, g in zip(replies, golds)]
    return results
