"""Finetuning helpers (shared.finetune, shared.instruct): splits, classifier, collate, data, loader."""

import json
import re

import pytest
import torch

from shared.data import VAL_PLAYS, shakespeare_plays
from shared.finetune import (
    LABELS,
    GPTClassifier,
    evaluate_classifier,
    genre_split,
    make_genre_dataset,
    pad_batch,
    play_label,
    set_trainable,
    train_classifier,
)
from shared.instruct import (
    EOS,
    IGNORE_INDEX,
    encode_example,
    exact_match,
    format_prompt,
    generate_instruction_data,
    instruction_collate,
    load_alpaca_json,
    split_instruction_data,
)
from shared.model import GPTConfig, GPTModel


class CharTok:
    """A tiny character tokenizer with an <|endoftext|> special token (id 0)."""

    def encode(self, text, allowed_special=()):
        if text == EOS:
            if EOS not in allowed_special and allowed_special != "all":
                raise ValueError("special token not allowed")
            return [0]
        return [min(ord(c), 126) + 1 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 1) for i in ids if i > 0)


CFG = GPTConfig(vocab_size=128, context_length=128, d_model=32, n_heads=4, n_layers=2)


# ---------------------------------------------------------------- classification data

def test_labels_cover_every_play():
    plays = shakespeare_plays()
    labels = {p.slug: play_label(p) for p in plays}
    assert set(labels.values()) == set(LABELS)
    assert labels["hamlet"] == "tragedy" and labels["julius-caesar"] == "tragedy"
    assert labels["henry-v"] == "history" and labels["the-tempest"] == "comedy"
    assert labels["cymbeline"] == "tragedy"  # First Folio override


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_never_shares_a_play(seed):
    train, test = genre_split(seed=seed)
    train_slugs, test_slugs = {p.slug for p in train}, {p.slug for p in test}
    assert not train_slugs & test_slugs
    assert len(train_slugs | test_slugs) == len(shakespeare_plays())
    for label in LABELS:  # stratified: every class on both sides
        assert any(play_label(p) == label for p in train) and any(play_label(p) == label for p in test)
    tok = CharTok()
    tr = make_genre_dataset(tok.encode, train, passages_per_class=6, max_tokens=40, seed=seed)
    te = make_genre_dataset(tok.encode, test, passages_per_class=6, max_tokens=40, seed=seed)
    assert not {p.slug for p in tr} & {p.slug for p in te}
    assert {p.slug for p in te} <= test_slugs
    assert [sum(p.label == i for p in te) for i in range(3)] == [6, 6, 6]  # balanced
    assert all(1 <= len(p.ids) <= 40 for p in tr + te)
    for p in te[:5]:  # the passage is really in its play
        assert p.text in next(q.text for q in test if q.slug == p.slug)


def test_split_is_deterministic_and_validates():
    assert genre_split(seed=3) == genre_split(seed=3)
    with pytest.raises(ValueError, match="test_fraction"):
        genre_split(test_fraction=1.0)


# ---------------------------------------------------------------- classifier

def test_classifier_pools_last_real_token_and_ignores_padding():
    torch.manual_seed(0)
    clf = GPTClassifier(GPTModel(CFG).eval(), n_classes=3).eval()
    seqs = [[5, 6, 7, 8, 9], [5, 6, 7]]
    idx, mask = pad_batch(seqs, pad_id=99)
    assert mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    batched = clf(idx, mask)
    assert batched.shape == (2, 3)
    alone = clf(torch.tensor([seqs[1]]))
    torch.testing.assert_close(batched[1], alone[0], rtol=1e-5, atol=1e-5)
    # pooled vector is the last real token's hidden state
    h = clf.model.hidden_states(torch.tensor([seqs[1]]))[0, -1]
    torch.testing.assert_close(alone[0], clf.head(h))


def test_freezing_strategies():
    clf = GPTClassifier(GPTModel(CFG), n_classes=3)
    head = sum(p.numel() for p in clf.head.parameters())
    assert set_trainable(clf, "head") == head
    n_last = set_trainable(clf, "last_blocks", n_blocks=1)
    block = sum(p.numel() for p in clf.model.blocks[-1].parameters())
    norm = sum(p.numel() for p in clf.model.final_norm.parameters())
    assert n_last == head + block + norm
    assert not any(p.requires_grad for p in clf.model.blocks[0].parameters())
    assert set_trainable(clf, "all") == sum(p.numel() for p in clf.parameters())
    with pytest.raises(ValueError, match="strategy"):
        set_trainable(clf, "some")


def test_train_classifier_learns_a_trivial_task():
    torch.manual_seed(0)
    from shared.finetune import Passage
    data = [Passage(ids=(1 + lab * 10,) * 6, label=lab, slug="x", text="") for lab in range(3)] * 4
    clf = GPTClassifier(GPTModel(CFG), n_classes=3)
    set_trainable(clf, "head")
    hist = train_classifier(clf, data, steps=15, batch_size=12, lr=3e-2)
    acc, cm = evaluate_classifier(clf, data)
    assert acc == 1.0 and cm.sum() == len(data) and hist["loss"][-1] < hist["loss"][0]


# ---------------------------------------------------------------- instruction data

def _recompute(rec):
    inp = rec["input"]
    if rec["task"] == "reverse_words":
        return " ".join(inp.split()[::-1])
    if rec["task"] == "count_words":
        return str(len(inp.split()))
    if rec["task"] == "last_word":
        return inp.split()[-1]
    if rec["task"] == "arithmetic":
        a, op, b = re.fullmatch(r"(\d+) ([+-]) (\d+)", inp).groups()
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))
    if rec["task"] == "speaker":  # the line follows "SPEAKER:" in its play, and occurs once in the corpus
        hits = [(p, t) for p in shakespeare_plays() for t in [p.text.splitlines()] if inp in t]
        found = []
        for p, lines in hits:
            assert p.slug not in VAL_PLAYS
            found += [lines[i - 1][:-1] for i, ln in enumerate(lines) if ln == inp]
        assert len(found) == 1, f"line {inp!r} is not unique in the corpus: {found}"
        return found[0]
    raise AssertionError(rec["task"])


def test_instruction_generator_deterministic_and_correct():
    a = generate_instruction_data(60, seed=5)
    assert a == generate_instruction_data(60, seed=5)
    assert a != generate_instruction_data(60, seed=6)
    assert {r["task"] for r in a} == {"reverse_words", "count_words", "last_word", "arithmetic", "speaker"}
    for rec in a:
        assert rec["output"] == _recompute(rec), rec
    assert len({(r["instruction"], r["input"]) for r in a}) == len(a)


def test_train_and_held_out_are_disjoint():
    recs = generate_instruction_data(100, seed=0)
    train, held = split_instruction_data(recs + recs[:10], held_out_fraction=0.2, seed=0)
    key = lambda r: (r["instruction"], r["input"])
    assert not {key(r) for r in train} & {key(r) for r in held}
    assert len(held) >= 20 and len(train) + len(held) == 110


def test_alpaca_prompt_format():
    p = format_prompt({"instruction": "Do it.", "input": "x"})
    assert p.startswith("Below is an instruction that describes a task, paired with an input")
    assert p.endswith("### Instruction:\nDo it.\n\n### Input:\nx\n\n### Response:\n")
    q = format_prompt({"instruction": "Do it.", "input": ""})
    assert "### Input" not in q and q.startswith("Below is an instruction that describes a task. Write")


# ---------------------------------------------------------------- collate

def test_collate_pads_with_ignore_index_and_masks_prompt():
    batch = [([1, 2, 3], [4, 5]), ([6, 7], [8])]
    x, y, m = instruction_collate(batch, pad_id=0, mask_prompt=False)
    assert x.tolist() == [[1, 2, 3, 4], [6, 7, 0, 0]]
    assert y.tolist() == [[2, 3, 4, 5], [7, 8, IGNORE_INDEX, IGNORE_INDEX]]
    assert m.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    x, y, _ = instruction_collate(batch, pad_id=0, mask_prompt=True)
    assert y.tolist() == [[-100, -100, 4, 5], [-100, 8, -100, -100]]
    # the loss only sees the response tokens
    logits = torch.randn(2, 4, 10)
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    manual = torch.stack([torch.nn.functional.cross_entropy(logits[i, t][None], y[i, t][None])
                          for i, t in [(0, 2), (0, 3), (1, 1)]]).mean()
    torch.testing.assert_close(full, manual)
    x, y, _ = instruction_collate(batch, pad_id=0, mask_prompt=False, max_length=2)
    assert x.shape == (2, 2)
    with pytest.raises(ValueError, match="empty batch"):
        instruction_collate([], pad_id=0)


def test_encode_example_and_exact_match_runs():
    tok = CharTok()
    rec = {"instruction": "Say x.", "input": "", "output": "x"}
    prompt, resp = encode_example(tok, rec, preamble=False)
    assert tok.decode(prompt) == format_prompt(rec, preamble=False) and resp == tok.encode("x") + [0]
    torch.manual_seed(0)
    model = GPTModel(CFG)
    score, preds = exact_match(model, tok, [rec], max_new_tokens=3, preamble=False)
    assert 0.0 <= score <= 1.0 and len(preds) == 1


# ---------------------------------------------------------------- Alpaca JSON loader

def test_alpaca_loader(tmp_path):
    good = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "output": "e"}]
    (tmp_path / "ok.json").write_text(json.dumps(good))
    recs = load_alpaca_json(tmp_path / "ok.json")
    assert recs[1]["input"] == "" and recs[0]["output"] == "c"
    cases = {
        "bad.json": ('[{"instruction": "a",', "not valid JSON"),
        "dict.json": ('{"instruction": "a"}', "expected a JSON list"),
        "item.json": ('["a"]', "record 0 must be an object"),
        "missing.json": ('[{"instruction": "a", "output": "b"}, {"instruction": "a"}]', "record 1 is missing .*'output'"),
        "type.json": ('[{"instruction": "a", "output": 3}]', "record 0 field 'output' must be a string"),
        "empty.json": ('[{"instruction": " ", "output": "x"}]', "record 0 has an empty instruction"),
    }
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=msg):
            load_alpaca_json(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_alpaca_json(tmp_path / "nope.json")


def test_batched_exact_match_equals_one_at_a_time():
    from shared.instruct import answer
    tok = CharTok()
    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    recs = generate_instruction_data(6, seed=1, tasks=("reverse_words", "arithmetic", "last_word"))
    recs[0] = {**recs[0], "output": answer(model, tok, recs[0], max_new_tokens=4, preamble=False)}
    score, preds = exact_match(model, tok, recs, max_new_tokens=4, preamble=False, batch_size=4)
    assert preds == [answer(model, tok, r, max_new_tokens=4, preamble=False) for r in recs]
    assert score >= 1 / 6
