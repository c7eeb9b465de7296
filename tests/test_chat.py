"""ChatML special tokens, assistant-only labels and multi-turn data (shared.chat)."""

import doctest

import pytest
import torch

import shared.chat as C
from shared.chat import (CHAT_TOKENS, IM_END, IM_START, add_chat_tokens, chat_collate, chat_exact_match,
                         encode_chat, make_conversations, render_chat, resize_token_embeddings, show_loss_mask)
from shared.instruct import IGNORE_INDEX, train_instructions
from shared.llama import chat_prompt
from shared.model import GPTConfig, GPTModel
from shared.tokenizer import ENDOFTEXT, BPETokenizer


@pytest.fixture(scope="module")
def tok():
    from shared.data import load_shakespeare
    base = BPETokenizer.train(load_shakespeare("train")[:60_000], vocab_size=400)
    return add_chat_tokens(base)


def test_doctests():
    assert doctest.testmod(C).failed == 0


def test_add_chat_tokens_appends_and_keeps_old_ids(tok):
    base = BPETokenizer(tok.merges, {ENDOFTEXT: tok.special_tokens[ENDOFTEXT]}, tok.pattern)
    assert tok.vocab_size == base.vocab_size + 2
    assert [tok.special_tokens[t] for t in CHAT_TOKENS] == [base.vocab_size, base.vocab_size + 1]
    text = "To be, or not to be: that is the question.\n"
    assert tok.encode(text) == base.encode(text)
    assert add_chat_tokens(tok).special_tokens == tok.special_tokens       # idempotent
    # the markers in plain text stay text: only allowed_special turns them into the special ids
    assert tok.special_tokens[IM_END] not in tok.encode_ordinary(IM_END)


def test_resize_token_embeddings_mean_init_and_tied():
    torch.manual_seed(0)
    m = GPTModel(GPTConfig(vocab_size=300, context_length=16, d_model=32, n_heads=4, n_layers=1, dropout=0.0))
    idx = torch.randint(0, 300, (2, 8))
    before = m(idx).detach()
    old = m.tok_emb.weight.detach().clone()
    resize_token_embeddings(m, 302)
    assert m.cfg.vocab_size == 302 and m.tok_emb.weight.shape == (302, 32)
    assert m.lm_head.weight is m.tok_emb.weight
    assert torch.equal(m.tok_emb.weight[:300], old)
    torch.testing.assert_close(m.tok_emb.weight[300], old.mean(0))
    torch.testing.assert_close(m(idx)[..., :300], before)                # old tokens' logits unchanged
    with pytest.raises(ValueError, match="vocab_size"):
        resize_token_embeddings(m, 10)
    with pytest.raises(TypeError, match="GPTModel"):
        resize_token_embeddings(torch.nn.Linear(2, 2), 5)


def test_render_equals_smollm2_template_without_default_system():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]
    assert render_chat(msgs) == chat_prompt(msgs, add_generation_prompt=False)
    assert render_chat(msgs[1:2], True) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_encode_chat_equals_whole_text_encoding(tok):
    # the piecewise encoding (needed for the mask) is the encoding of the rendered text
    for conv in make_conversations(60, seed=3, system="Answer briefly."):
        ids, labels = encode_chat(tok, conv["messages"])
        assert ids == tok.encode(render_chat(conv["messages"]), allowed_special="all")
        assert len(labels) == len(ids)
        g, _ = encode_chat(tok, conv["messages"][:-1], add_generation_prompt=True)
        assert g == tok.encode(render_chat(conv["messages"][:-1], True), allowed_special="all")


def test_labels_are_exactly_the_assistant_turns(tok):
    conv = make_conversations(5, seed=1, system="Answer briefly.")[2]["messages"]
    ids, labels = encode_chat(tok, conv)
    end = tok.special_tokens[IM_END]
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert all(lab in (i, IGNORE_INDEX) for i, lab in zip(ids, labels))
    want = []
    for m in conv:
        if m["role"] == "assistant":
            want += tok.encode(m["content"]) + [end]
    assert trained == want
    # each trained span ends with <|im_end|>: the model learns to stop
    assert sum(1 for i, lab in zip(ids, labels) if lab == end) == 2
    # no system or user token and no role header is trained
    n_masked = sum(lab == IGNORE_INDEX for lab in labels)
    assert n_masked == len(ids) - len(want)
    text = show_loss_mask(tok, ids, labels)
    assert text.count("[[") == 2 and "[[" + conv[2]["content"] + IM_END + "]]" in text
    assert show_loss_mask(tok, ids, labels, as_html=True).count("#b7e4b0") == len(want)


def test_chat_collate_shifts_and_pads(tok):
    batch = [([1, 2, 3, 4], [-100, -100, 3, 4]), ([5, 6], [-100, 6])]
    x, y, m = chat_collate(batch, pad_id=0)
    assert x.tolist() == [[1, 2, 3], [5, 0, 0]]
    assert y.tolist() == [[-100, 3, 4], [6, -100, -100]]
    assert m.tolist() == [[1, 1, 1], [1, 0, 0]]
    x, y, _ = chat_collate(batch, pad_id=0, max_length=2)
    assert x.shape == (2, 2) and y.tolist()[0] == [-100, 3]
    with pytest.raises(ValueError, match="labels"):
        chat_collate([([1, 2], [1])], pad_id=0)
    with pytest.raises(ValueError, match="empty"):
        chat_collate([], pad_id=0)


def test_make_conversations_need_the_history():
    convs = make_conversations(120, seed=0)
    assert convs == make_conversations(120, seed=0)
    for c in convs:
        first_input = c["messages"][0]["content"].split("\n")[1].split()
        follow, answer = c["messages"][2]["content"], c["messages"][3]["content"]
        assert follow in {q for q, _ in C.FOLLOW_UPS.values()}                 # the input is not repeated
        assert answer == (first_input[0] if c["follow_up"] == "first_word" else str(len(first_input)))
    assert {c["follow_up"] for c in convs} == {"first_word", "word_count"}
    assert {c["task"] for c in convs} == {"reverse_words", "count_words", "last_word"}


def test_chat_exact_match_teacher_forces_the_history(monkeypatch):
    convs = make_conversations(6, seed=0)
    seen = []

    def fake(model, tokenizer, prompts, max_new_tokens=12, batch_size=32):
        seen.append(prompts)
        return [p[-1]["content"] and "x" for p in prompts]

    monkeypatch.setattr(C, "chat_generate", fake)
    res = chat_exact_match(None, None, convs)
    assert set(res) == {1, 2} and all(len(v) == 6 for v in res.values())
    turn2 = seen[1][0]
    assert [m["role"] for m in turn2] == ["user", "assistant", "user"]
    assert turn2[1]["content"] == convs[0]["messages"][1]["content"]          # the reference answer


def test_training_pipeline_memorises_both_turns(tok):
    """End to end (labels, collate, generation prompt, stop token): a tiny model overfits 16
    conversations with the assistant-only loss and then answers both turns of each."""
    torch.manual_seed(0)
    m = GPTModel(GPTConfig(vocab_size=tok.vocab_size, context_length=128, d_model=64, n_heads=4, n_layers=2,
                           dropout=0.0))
    convs = make_conversations(16, seed=0)
    data = [encode_chat(tok, c["messages"]) for c in convs]
    assert max(len(ids) for ids, _ in data) <= 128                        # nothing is cut from the history
    before = chat_exact_match(m, tok, convs)
    hist = train_instructions(m, data, steps=100, batch_size=16, lr=3e-3, pad_id=tok.special_tokens[IM_END],
                              collate=chat_collate)
    after = chat_exact_match(m, tok, convs)
    assert hist["loss"][-1] < 0.1 < hist["loss"][0]
    assert sum(before[1]) + sum(before[2]) == 0
    assert sum(after[1]) >= 12 and sum(after[2]) >= 14, (sum(after[1]), sum(after[2]))


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([{"role": "robot", "content": "x"}], "role"),
    ([{"role": "user", "content": 3}], "content"),
    ([{"role": "user", "content": "a<|im_end|>b"}], "special token"),
])
def test_bad_messages(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        encode_chat(tok, messages)


def test_bad_tokenizer_and_n():
    plain = BPETokenizer.train("hello there", vocab_size=260)
    with pytest.raises(ValueError, match="add_chat_tokens"):
        encode_chat(plain, [{"role": "user", "content": "hi"}])
    with pytest.raises(TypeError, match="BPETokenizer"):
        add_chat_tokens("gpt2")
    with pytest.raises(TypeError, match="string"):
        add_chat_tokens(plain, IM_START)
    with pytest.raises(ValueError, match="n must"):
        make_conversations(0)
