"""Instruction finetuning (Chapter 7, section 2): Alpaca prompts, a verifiable data set,
padding/masking collate, and exact-match evaluation.

* The prompt format is Stanford Alpaca's (Taori et al., 2023, ``PROMPT_DICT`` in
  ``tatsu-lab/stanford_alpaca/train.py``): a fixed preamble, ``### Instruction:``, an optional
  ``### Input:`` and ``### Response:``, after which the model writes the answer and then
  ``<|endoftext|>``.
* :func:`generate_instruction_data` makes tasks whose answers a program can check (reverse
  words, count words, last word, small arithmetic, name the speaker of a line of the corpus),
  so evaluation is an exact string match: no external judge, no server.
* :func:`load_alpaca_json` reads any Alpaca-format JSON file a learner brings.
* :func:`instruction_collate` pads a batch, puts ``ignore_index = -100`` on padding targets
  (``F.cross_entropy`` skips them) and, optionally, on the prompt's targets, so the loss only
  teaches the model to *answer*, not to reproduce the instruction.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.generate import find_eos_id, generate, left_pad
from shared.train import autocast_context, make_grad_scaler, optimizer_step, shuffled_batches

__all__ = ["EOS", "IGNORE_INDEX", "PREAMBLE", "PREAMBLE_NO_INPUT", "format_prompt", "load_alpaca_json",
           "TASKS", "generate_instruction_data", "split_instruction_data", "encode_example",
           "instruction_collate", "eos_token_id", "greedy_generate", "answer", "exact_match",
           "format_few_shot", "few_shot_exact_match", "train_instructions"]

EOS = "<|endoftext|>"
IGNORE_INDEX = -100

PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.")
PREAMBLE_NO_INPUT = ("Below is an instruction that describes a task. "
                     "Write a response that appropriately completes the request.")


def format_prompt(record: dict, preamble: bool = True) -> str:
    """The Alpaca prompt for ``record`` (keys ``instruction`` and optional ``input``), ending in
    ``"### Response:\\n"``; the model's answer follows it.

    ``preamble=False`` drops the fixed first sentence (a saving of ~30 tokens for models with a
    short context; the three ``###`` headers stay).

    Example::

        >>> print(format_prompt({"instruction": "Add the numbers.", "input": "2 + 3"}, preamble=False))
        ### Instruction:
        Add the numbers.
        <BLANKLINE>
        ### Input:
        2 + 3
        <BLANKLINE>
        ### Response:
        <BLANKLINE>

    Raises:
        ValueError: if ``record`` is not a dict with an ``instruction`` string.
    """
    _check_record(record)
    instruction, inp = record["instruction"], record.get("input", "") or ""
    head = (PREAMBLE if inp else PREAMBLE_NO_INPUT) + "\n\n" if preamble else ""
    body = f"### Instruction:\n{instruction}\n\n"
    if inp:
        body += f"### Input:\n{inp}\n\n"
    return head + body + "### Response:\n"


def load_alpaca_json(path: str | os.PathLike) -> list[dict]:
    """Read an Alpaca-format JSON file: a list of ``{"instruction", "input", "output"}`` objects.

    ``input`` may be missing (treated as ``""``); extra keys are kept. Returns a list of dicts
    with string ``instruction``, ``input`` and ``output``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not valid JSON (with line and column), the top level is not
            a list, a record is not an object, ``instruction`` or ``output`` is missing, or a
            field is not a string; the message names the record's index.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    if not isinstance(data, list):
        raise ValueError(f"{path.name}: expected a JSON list of records, got {type(data).__name__}")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ValueError(f"{path.name}: record {i} must be an object with instruction/input/output, "
                             f"got {type(rec).__name__}")
        for key in ("instruction", "output"):
            if key not in rec:
                raise ValueError(f"{path.name}: record {i} is missing the required key {key!r}")
        rec = {**rec, "input": rec.get("input", "") if rec.get("input") is not None else ""}
        for key in ("instruction", "input", "output"):
            if not isinstance(rec[key], str):
                raise ValueError(f"{path.name}: record {i} field {key!r} must be a string, "
                                 f"got {type(rec[key]).__name__}")
        if not rec["instruction"].strip():
            raise ValueError(f"{path.name}: record {i} has an empty instruction")
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------
# A data set with verifiable answers
# --------------------------------------------------------------------------------------

#: Common words of the plays, for the word tasks (kept short so they tokenize into few pieces).
WORDS = ("love", "king", "night", "death", "heart", "crown", "sweet", "lord", "blood", "fair",
         "true", "good", "grace", "honour", "time", "world", "eyes", "life", "soul", "heaven",
         "man", "day", "sir", "word", "hand", "friend", "fool", "war", "peace", "gold",
         "moon", "sun", "rose", "sword", "queen", "duke", "lady", "wife", "son", "father",
         "speak", "come", "go", "stay", "fly", "sleep", "dream", "weep", "laugh", "sing")

TASKS = ("reverse_words", "count_words", "last_word", "arithmetic", "speaker")
_SPEAKER_LINE = re.compile(r"^([A-Z][A-Z .'\-]+):$")


def _speaker_lines(min_words: int = 6) -> list[tuple[str, str]]:
    """``(line, speaker)`` pairs from the training plays: first lines of speeches with at least
    ``min_words`` words that occur exactly once in the whole corpus (so the answer is unique)."""
    from shared.data import VAL_PLAYS, shakespeare_plays

    plays = shakespeare_plays()
    counts: dict[str, int] = {}
    for p in plays:
        for ln in p.text.splitlines():
            counts[ln] = counts.get(ln, 0) + 1
    pairs = []
    for p in plays:
        if p.slug in VAL_PLAYS:
            continue
        lines = p.text.splitlines()
        for a, b in zip(lines, lines[1:]):
            m = _SPEAKER_LINE.match(a)
            if m and len(b.split()) >= min_words and counts[b] == 1 and not _SPEAKER_LINE.match(b):
                pairs.append((b, m.group(1)))
    return pairs


def _make(task: str, rng: random.Random, speaker_pool: list[tuple[str, str]] | None) -> dict:
    if task == "reverse_words":
        words = rng.sample(WORDS, rng.randint(3, 5))
        return {"instruction": "Reverse the order of the words.", "input": " ".join(words),
                "output": " ".join(reversed(words)), "task": task}
    if task == "count_words":
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]
        return {"instruction": "How many words are in the input?", "input": " ".join(words),
                "output": str(len(words)), "task": task}
    if task == "last_word":
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
        return {"instruction": "What is the last word of the input?", "input": " ".join(words),
                "output": words[-1], "task": task}
    if task == "arithmetic":
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if rng.random() < 0.5:
            return {"instruction": "Compute the result.", "input": f"{a} + {b}", "output": str(a + b), "task": task}
        a, b = max(a, b), min(a, b)
        return {"instruction": "Compute the result.", "input": f"{a} - {b}", "output": str(a - b), "task": task}
    if task == "speaker":
        line, speaker = rng.choice(speaker_pool)
        return {"instruction": "Name the speaker of this line.", "input": line, "output": speaker, "task": task}
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def generate_instruction_data(n: int, seed: int = 0, tasks: Sequence[str] = TASKS) -> list[dict]:
    """``n`` distinct instruction records ``{"instruction", "input", "output", "task"}``.

    Deterministic for a given ``seed`` (one ``random.Random(seed)`` drives every choice; tasks
    take turns so each gets ``~n / len(tasks)`` records). Every answer can be checked by a
    program: the ``speaker`` task uses only lines that occur once in the corpus, from the
    training plays (not :data:`shared.data.VAL_PLAYS`).

    Raises:
        ValueError: for an unknown task, ``n < 1``, or if ``n`` distinct records cannot be made.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; choose from {TASKS}")
    rng = random.Random(seed)
    pool = _speaker_lines() if "speaker" in tasks else None
    seen: set[tuple[str, str]] = set()
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"could only make {len(out)} distinct records of tasks {tuple(tasks)}")
        rec = _make(tasks[len(out) % len(tasks)], rng, pool)
        key = (rec["instruction"], rec["input"])
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out


def split_instruction_data(records: Sequence[dict], held_out_fraction: float = 0.2,
                           seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle (``random.Random(seed)``) and split into ``(train, held_out)``.

    Records with the same ``(instruction, input)`` prompt always land on the same side, so a
    held-out prompt is never seen in training.

    Raises:
        ValueError: if ``held_out_fraction`` is not in (0, 1) or either side would be empty.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    keys = sorted({(r["instruction"], r.get("input", "")) for r in records})
    random.Random(seed).shuffle(keys)
    k = round(held_out_fraction * len(keys))
    if k == 0 or k == len(keys):
        raise ValueError(f"{len(keys)} distinct prompts cannot be split with held_out_fraction={held_out_fraction}")
    held = set(keys[:k])
    train = [r for r in records if (r["instruction"], r.get("input", "")) not in held]
    test = [r for r in records if (r["instruction"], r.get("input", "")) in held]
    return train, test


# --------------------------------------------------------------------------------------
# Tokenising, collating, generating
# --------------------------------------------------------------------------------------

def eos_token_id(tokenizer) -> int:
    """The id of ``<|endoftext|>`` for a course BPE tokenizer or a tiktoken encoding
    (:func:`shared.generate.find_eos_id`, which must find one).

    Raises:
        ValueError: if the tokenizer does not encode ``<|endoftext|>`` as a single token.
    """
    eos = find_eos_id(tokenizer)
    if eos is None:
        raise ValueError(f"tokenizer does not encode {EOS!r} as one special token")
    return eos


def _check_record(record) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
        raise ValueError(f"record must be a dict with an 'instruction' string, got {record!r:.80}")


def encode_example(tokenizer, record: dict, preamble: bool = True) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)``: the Alpaca prompt, and the answer followed by ``<|endoftext|>``.

    Raises:
        ValueError: if ``record`` lacks an ``instruction`` or an ``output`` string.
    """
    _check_record(record)
    prompt = format_prompt(record, preamble)
    if not isinstance(record.get("output"), str):
        raise ValueError(f"record needs an 'output' string (the answer to learn), got {record!r:.80}")
    return tokenizer.encode(prompt), tokenizer.encode(record["output"]) + [eos_token_id(tokenizer)]


def instruction_collate(batch: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                        ignore_index: int = IGNORE_INDEX, mask_prompt: bool = True,
                        max_length: int | None = None,
                        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a batch of ``(prompt_ids, response_ids)`` into next-token training tensors.

    For each example ``seq = prompt + response`` (cut to ``max_length + 1`` tokens if given),
    ``inputs = seq[:-1]`` and ``targets = seq[1:]``. Then, to the longest example in the batch:

    * ``inputs`` are right-padded with ``pad_id``; ``attention_mask`` is 1 on real tokens;
    * ``targets`` are padded with ``ignore_index`` (-100): ``F.cross_entropy`` skips those
      positions, so padding neither adds loss nor dilutes the mean;
    * with ``mask_prompt=True`` the targets that are prompt tokens are ``ignore_index`` too:
      the first target kept is the first response token, predicted from the whole prompt.

    Returns:
        ``(inputs [B, T], targets [B, T], attention_mask [B, T])``, all ``torch.long``.

    Raises:
        ValueError: for an empty batch, an example with fewer than 2 tokens, or ``max_length < 1``.
    """
    if not batch:
        raise ValueError("empty batch")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    rows = []
    for i, (prompt, response) in enumerate(batch):
        seq = list(prompt) + list(response)
        if max_length is not None:
            seq = seq[:max_length + 1]
        if len(seq) < 2:
            raise ValueError(f"example {i} has {len(seq)} token(s); need at least 2")
        tgt = seq[1:]
        if mask_prompt:
            n_masked = min(len(prompt) - 1, len(tgt))
            tgt = [ignore_index] * n_masked + tgt[n_masked:]
        rows.append((seq[:-1], tgt))
    return _pad_rows(rows, pad_id, ignore_index, device)


def _pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, ignore_index: int = IGNORE_INDEX,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``(inputs, targets)`` rows to the longest: inputs with ``pad_id``, targets with
    ``ignore_index``; returns ``(inputs [B, T], targets [B, T], attention_mask [B, T])``."""
    T = max(len(x) for x, _ in rows)
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), ignore_index, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        inputs[i, :len(x)] = torch.tensor(x)
        targets[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    if device is not None:
        inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    return inputs, targets, mask


def greedy_generate(model: nn.Module, ids: Sequence[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Greedy continuation of one prompt: the new token ids (without the prompt, without EOS).

    Uses ``shared.generate.generate`` (Chapter 6: temperature 0, KV cache). The prompt is cut
    from the left to leave room for the answer.

    Raises:
        ValueError: if ``ids`` is empty or ``max_new_tokens`` is not an int >= 0 (and as
            ``shared.generate.generate``).
    """
    if len(ids) == 0:
        raise ValueError("ids must hold at least one prompt token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    keep = max(1, model.cfg.context_length - max_new_tokens)
    ids = list(ids)[-keep:]
    idx = torch.tensor([ids], dtype=torch.long)
    out = generate(model, idx, max_new_tokens, temperature=0.0, eos_id=eos_id)[0, len(ids):].tolist()
    return out[:out.index(eos_id)] if eos_id is not None and eos_id in out else out


def answer(model: nn.Module, tokenizer, record: dict, max_new_tokens: int = 16, preamble: bool = True) -> str:
    """The model's greedy answer to ``record``'s Alpaca prompt, stripped of whitespace.

    Raises:
        ValueError: if ``record`` has no ``instruction`` string.
    """
    _check_record(record)
    ids = tokenizer.encode(format_prompt(record, preamble))
    new = greedy_generate(model, ids, max_new_tokens, eos_token_id(tokenizer))
    return tokenizer.decode(new).strip()


def exact_match(model: nn.Module, tokenizer, records: Sequence[dict], max_new_tokens: int = 16,
                preamble: bool = True, batch_size: int = 32) -> tuple[float, list[str]]:
    """Fraction of ``records`` whose greedy answer equals ``output`` exactly (after ``strip()``),
    and the answers.

    Prompts are generated ``batch_size`` at a time, left-padded, with
    ``shared.generate.generate`` (Chapter 6; each row gets the tokens it would get alone).
    Prompts are cut from the left to leave ``max_new_tokens`` positions of the context for the
    answer.

    Raises:
        ValueError: if ``records`` is empty.
    """
    if not records:
        raise ValueError("exact_match needs at least one record")
    eos_id = eos_token_id(tokenizer)
    keep = max(1, model.cfg.context_length - max_new_tokens)
    prompts = [tokenizer.encode(format_prompt(r, preamble))[-keep:] for r in records]
    new_ids: list[list[int]] = []
    for s in range(0, len(prompts), batch_size):
        idx, mask = left_pad(prompts[s:s + batch_size], pad_id=eos_id)
        out = generate(model, idx, max_new_tokens, temperature=0.0, eos_id=eos_id, attention_mask=mask)
        for row in out[:, idx.size(1):].tolist():
            new_ids.append(row[:row.index(eos_id)] if eos_id in row else row)
    preds = [tokenizer.decode(ids).strip() for ids in new_ids]
    score = sum(p == r["output"].strip() for p, r in zip(preds, records)) / len(records)
    return score, preds


def format_few_shot(record: dict, shots: Sequence[dict]) -> str:
    """A plain-text few-shot prompt: the instruction, then ``Input: ... / Output: ...`` demonstrations.

    A base model has never seen the Alpaca headers, so asking it zero-shot measures nothing. A
    few solved examples in a compact format it can continue (Brown et al. 2020, "Language Models
    are Few-Shot Learners", section 2) is the fair "before" figure. The answer is the text after
    the last ``Output:`` up to the end of the line.

    Example::

        >>> print(format_few_shot({"instruction": "Add.", "input": "2 + 3"},
        ...                       [{"instruction": "Add.", "input": "1 + 1", "output": "2"}]))
        Add.
        Input: 1 + 1
        Output: 2
        Input: 2 + 3
        Output:

    Raises:
        ValueError: if ``record`` has no ``instruction`` string.
    """
    _check_record(record)
    lines = [record["instruction"]]
    for shot in shots:
        lines += [f"Input: {shot['input']}", f"Output: {shot['output']}"]
    lines += [f"Input: {record['input']}", "Output:"]
    return "\n".join(lines)


@torch.no_grad()
def few_shot_exact_match(model: nn.Module, tokenizer, records: Sequence[dict], shot_pool: Sequence[dict],
                         k: int = 3, max_new_tokens: int = 8, seed: int = 0,
                         batch_size: int = 32) -> tuple[float, list[str]]:
    """Exact match of ``model`` prompted with ``k`` solved examples of the same task (:func:`format_few_shot`).

    The shots for each record are drawn (``random.Random(seed)``) from the records of
    ``shot_pool`` with the same ``task`` and a different prompt; the greedy continuation is cut at
    the first newline and stripped. Prompts are cut from the left to fit the context.

    Raises:
        ValueError: if ``records`` is empty, ``k < 0``, or a task has fewer than ``k`` shots in the pool.
    """
    if not records:
        raise ValueError("few_shot_exact_match needs at least one record")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    rng = random.Random(seed)
    by_task: dict[str, list[dict]] = {}
    for r in shot_pool:
        by_task.setdefault(r.get("task"), []).append(r)
    keep = max(1, model.cfg.context_length - max_new_tokens)
    prompts = []
    for r in records:
        pool = [s for s in by_task.get(r.get("task"), []) if s["input"] != r["input"]]
        if len(pool) < k:
            raise ValueError(f"task {r.get('task')!r} has {len(pool)} shots in shot_pool, need k={k}")
        prompts.append(tokenizer.encode(format_few_shot(r, rng.sample(pool, k)))[-keep:])
    pad = eos_token_id(tokenizer)
    preds: list[str] = []
    for s in range(0, len(prompts), batch_size):
        idx, mask = left_pad(prompts[s:s + batch_size], pad_id=pad)
        out = generate(model, idx, max_new_tokens, temperature=0.0, attention_mask=mask)
        for row in out[:, idx.size(1):].tolist():
            preds.append(tokenizer.decode([i for i in row if i != pad]).split("\n")[0].strip())
    score = sum(p == r["output"].strip() for p, r in zip(preds, records)) / len(records)
    return score, preds


def train_instructions(model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], *, steps: int,
                       batch_size: int = 16, lr: float = 3e-4, weight_decay: float = 0.0, pad_id: int = 0,
                       mask_prompt: bool = True, seed: int = 0, device: torch.device | str = "cpu",
                       log_every: int = 0, collate=None) -> dict:
    """Finetune ``model`` (its trainable parameters) on encoded examples with AdamW.

    Each step takes the next ``batch_size`` examples of a shuffled epoch, collates them with
    :func:`instruction_collate` (``max_length = context_length``) and minimises the mean
    cross-entropy over the targets that are not ``-100``. Returns ``{"loss": [...], "seconds": s}``.
    ``collate(batch, pad_id, max_length=, device=) -> (inputs, targets, mask)`` replaces
    :func:`instruction_collate` for other layouts (e.g. ``shared.chat.chat_collate`` for
    ``(ids, labels)`` conversations; ``mask_prompt`` is then unused).

    Raises:
        ValueError: if nothing is trainable, ``steps < 1`` or ``examples`` is empty.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    if steps < 1 or not examples:
        raise ValueError(f"need steps >= 1 and examples, got steps={steps}, {len(examples)} examples")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = make_grad_scaler(device)  # enabled only under fp16 (a T4)
    batches = shuffled_batches(len(examples), batch_size, random.Random(seed))  # epoch after shuffled epoch
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        chunk = next(batches)
        batch = [examples[i] for i in chunk]
        if collate is None:
            x, y, _ = instruction_collate(batch, pad_id, mask_prompt=mask_prompt,
                                          max_length=model.cfg.context_length, device=device)
        else:
            x, y, _ = collate(batch, pad_id, max_length=model.cfg.context_length, device=device)
        # Right padding: under the causal mask a real token never attends to the padding after
        # it, so no attention mask is needed (and the fast is_causal attention path is kept).
        with autocast_context(device):  # bf16/fp16 on a GPU, plain fp32 on the CPU
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
        optimizer_step(loss, opt, params, scaler, max_norm=1.0)
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    return {"loss": losses, "seconds": time.perf_counter() - t0}
