"""DPO (shared.dpo): the loss against a hand computation, its gradient, response-only log-probs."""

import math

import pytest
import torch
import torch.nn.functional as F

from shared.dpo import dpo_loss, preference_collate, sequence_logprobs, train_dpo
from shared.model import GPTConfig, GPTModel

CFG = GPTConfig(vocab_size=50, context_length=16, d_model=16, n_heads=2, n_layers=1)


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_hand_computed_example():
    # beta = 0.5; chosen: policy -1.0 vs ref -1.5 -> reward 0.25; rejected: -2.0 vs -1.5 -> -0.25
    loss, r_w, r_l = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5)
    assert r_w.item() == pytest.approx(0.25) and r_l.item() == pytest.approx(-0.25)
    assert loss.item() == pytest.approx(0.4740769841801067)  # -log sigmoid(0.5) = log(1 + e^-0.5)
    # two pairs: the loss is the mean; and the reference matters (same policy, other reference)
    loss2, _, _ = dpo_loss(t(-1.0, -3.0), t(-2.0, -1.0), t(-1.5, -3.0), t(-1.5, -1.0), beta=0.5)
    assert loss2.item() == pytest.approx((0.4740769841801067 + math.log(2)) / 2)


def test_equal_policy_and_reference_gives_log2_and_zero_rewards():
    pc, pr = torch.randn(8), torch.randn(8)
    loss, r_w, r_l = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.3)
    assert loss.item() == pytest.approx(math.log(2))
    assert torch.all(r_w == 0) and torch.all(r_l == 0)


def test_gradient_sign_and_rewards_detached():
    pc = torch.tensor([-2.0, -1.0], requires_grad=True)
    pr = torch.tensor([-1.0, -3.0], requires_grad=True)
    loss, r_w, r_l = dpo_loss(pc, pr, t(-1.5, -1.5), t(-1.5, -1.5), beta=0.1)
    loss.backward()
    assert torch.all(pc.grad < 0), "gradient descent must raise the chosen log-prob"
    assert torch.all(pr.grad > 0), "gradient descent must lower the rejected log-prob"
    # d loss / d pc_i = -beta * sigmoid(-margin_i) / B (the paper's weighting, section 4)
    margin = 0.1 * ((pc - (-1.5)) - (pr - (-1.5))).detach()
    assert torch.allclose(pc.grad, -0.1 * torch.sigmoid(-margin) / 2)
    assert not r_w.requires_grad and not r_l.requires_grad


def test_dpo_matches_softplus_form_and_beta_scales_margin():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) for _ in range(4))
    for beta in (0.05, 0.5, 2.0):
        loss, r_w, r_l = dpo_loss(pc, pr, rc, rr, beta)
        ref = F.softplus(-beta * ((pc - rc) - (pr - rr))).mean()
        assert torch.allclose(loss, ref, atol=1e-6)
        assert torch.allclose(r_w, beta * (pc - rc)) and torch.allclose(r_l, beta * (pr - rr))


def test_sequence_logprobs_sums_response_tokens_only():
    model = tiny()
    ids = torch.randint(0, CFG.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    resp = torch.zeros(2, 10, dtype=torch.long)
    resp[0, 6:] = 1
    resp[1, 3:8] = 1
    out = sequence_logprobs(model, ids, resp)
    with torch.no_grad():
        logp = F.log_softmax(model(ids), -1)
    manual = [sum(logp[b, j - 1, ids[b, j]].item() for j in range(10) if resp[b, j]) for b in range(2)]
    assert torch.allclose(out, torch.tensor(manual), atol=1e-5)
    # masking the prompt changes the result by exactly the prompt tokens' log-probs
    everything = torch.ones_like(resp)
    everything[:, 0] = 0
    full = sequence_logprobs(model, ids, everything)
    prompt_part = [sum(logp[b, j - 1, ids[b, j]].item() for j in range(1, 10) if not resp[b, j]) for b in range(2)]
    assert torch.allclose(full - out, torch.tensor(prompt_part), atol=1e-5)
    assert torch.all(full < out), "adding (negative) prompt log-probs must lower the sum"
    # a sum, not a mean: doubling the response span roughly doubles the magnitude
    assert out.requires_grad


def test_sequence_logprobs_right_padding_is_ignored():
    model = tiny()
    prompt, answer = [3, 4, 5, 6], [7, 8]
    ids, mask = preference_collate([(prompt, answer, [9]), (prompt + [1, 2], [7], [9, 9, 9])], pad_id=0)
    assert ids.shape == (4, 9) and mask[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0]
    alone = sequence_logprobs(model, torch.tensor([prompt + answer]), torch.tensor([[0, 0, 0, 0, 1, 1]]))
    assert torch.allclose(sequence_logprobs(model, ids, mask)[0], alone[0], atol=1e-5)


def test_bad_inputs_name_the_argument():
    model = tiny()
    ids = torch.randint(0, CFG.vocab_size, (2, 6))
    good = torch.zeros(2, 6, dtype=torch.long)
    good[:, 3:] = 1
    with pytest.raises(TypeError, match="ids"):
        sequence_logprobs(model, ids.float(), good)
    with pytest.raises(ValueError, match="response_mask"):
        sequence_logprobs(model, ids, good[:, :5])
    bad0 = good.clone()
    bad0[:, 0] = 1
    with pytest.raises(ValueError, match=r"response_mask\[:, 0\]"):
        sequence_logprobs(model, ids, bad0)
    with pytest.raises(ValueError, match="0/1"):
        sequence_logprobs(model, ids, good * 0.5)
    with pytest.raises(ValueError, match="no response token"):
        sequence_logprobs(model, ids, torch.zeros_like(good))
    x = t(-1.0, -2.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=float("nan"))
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_loss(x, x, x, t(-1.0), beta=0.1)
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        dpo_loss(x[None], x, x, x, beta=0.1)
    with pytest.raises(TypeError, match="policy_rejected_logps"):
        dpo_loss(x, torch.tensor([1, 2]), x, x, beta=0.1)
    with pytest.raises(ValueError, match="empty"):
        preference_collate([], pad_id=0)
    with pytest.raises(ValueError, match="different modules"):
        train_dpo(model, model, [([1], [2], [3])], steps=1)


def test_train_dpo_raises_preference_accuracy():
    policy, reference = tiny(0), tiny(0)
    pairs = [([1, 2, 3, 4], [10, 11], [20, 21]), ([5, 6, 7], [12], [22]), ([8, 9], [13, 14, 15], [23, 24])]
    hist = train_dpo(policy, reference, pairs, steps=15, beta=0.5, batch_size=3, lr=1e-2)
    assert hist["loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert hist["loss"][-1] < 0.3 and hist["accuracy"][-1] == 1.0 and hist["margin"][-1] > 0
    assert all(not p.requires_grad for p in reference.parameters())
    assert torch.equal(reference.tok_emb.weight, tiny(0).tok_emb.weight), "the reference must stay frozen"
