"""GRPO (shared.grpo): group advantages, the clipped surrogate with KL, and the online loop."""

import copy
import doctest
import random

import pytest
import torch

import shared.grpo as G
from shared.grpo import group_advantages, grpo_loss, token_logprobs, train_grpo
from shared.model import GPTConfig, GPTModel
from shared.tokenizer import BPETokenizer


def test_doctests():
    assert doctest.testmod(G).failed == 0


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    a = group_advantages(r)
    sd = torch.tensor([1.0, 0.0, 0.0, 0.0]).std()                  # sample std of one 1 in four: 0.5
    torch.testing.assert_close(a[0], (r[0] - 0.25) / (sd + 1e-4))
    assert torch.equal(a[1], torch.zeros(4))                       # all equal: nothing to learn
    torch.testing.assert_close(a.mean(1), torch.zeros(2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))


def _inputs(seed=0, N=4, T=5):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(N, T, generator=g) * 3).requires_grad_(True)
    mask = torch.ones(N, T)
    mask[:, 0] = 0                                                  # a prompt token
    mask[1, -2:] = 0                                                # padding
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0])
    return logps, mask, adv


def test_on_policy_loss_is_minus_mean_advantage_and_its_gradient():
    logps, mask, adv = _inputs()
    loss, stats = grpo_loss(logps, logps.detach(), logps.detach(), adv, mask, beta=0.0)
    torch.testing.assert_close(loss, -adv.mean())                   # ρ = 1: surrogate = A on every token
    loss.backward()
    n = mask.sum(1, keepdim=True)
    torch.testing.assert_close(logps.grad, -(adv[:, None] * mask / n) / len(adv))
    assert stats["kl"] == 0.0 and stats["clipped"] == 0.0


def test_clipping_stops_the_gradient_only_where_ppo_says():
    logps, mask, _ = _inputs()
    old = logps.detach() - 0.5                                      # ρ = e^0.5 ≈ 1.65 > 1 + ε everywhere
    for a, zero in ((1.0, True), (-1.0, False)):
        lp = logps.detach().clone().requires_grad_(True)
        loss, stats = grpo_loss(lp, old, lp.detach(), torch.full((4,), a), mask, beta=0.0, clip_eps=0.2)
        loss.backward()
        # A > 0 and ρ > 1 + ε: the clipped term is the minimum and has no gradient;
        # A < 0: min picks the unclipped ρA, which keeps pushing the answer down.
        assert (lp.grad.abs().sum() == 0) == zero
        assert stats["clipped"] == 1.0


def test_kl_penalty_is_zero_at_the_reference_and_pulls_towards_it():
    logps, mask, _ = _inputs()
    zero_adv = torch.zeros(4)
    loss0, s0 = grpo_loss(logps, logps.detach(), logps.detach(), zero_adv, mask, beta=0.1)
    assert loss0.item() == 0.0 and s0["kl"] == 0.0
    ref = logps.detach() + 0.3                                      # the reference gives the tokens more probability
    loss, s = grpo_loss(logps, logps.detach(), ref, zero_adv, mask, beta=0.1)
    loss.backward()
    assert s["kl"] > 0 and loss.item() > 0
    assert (logps.grad[mask.bool()] < 0).all()                      # descent raises logps towards the reference


def test_tokens_outside_the_mask_do_not_count():
    logps, mask, adv = _inputs()
    other = logps.detach().clone()
    other[~mask.bool()] += 5.0
    a, _ = grpo_loss(logps.detach(), logps.detach(), logps.detach() + 0.2, adv, mask, beta=0.1)
    b, _ = grpo_loss(other, logps.detach(), logps.detach() + 0.2, adv, mask, beta=0.1)
    # the masked entries of `other` differ from old/ref there, which must not matter
    torch.testing.assert_close(a, b)


def test_token_logprobs_matches_log_softmax():
    torch.manual_seed(0)
    m = GPTModel(GPTConfig(vocab_size=50, context_length=16, d_model=16, n_heads=2, n_layers=1, dropout=0.0))
    ids = torch.randint(0, 50, (2, 7))
    lp = token_logprobs(m, ids)
    ref = torch.log_softmax(m(ids), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp, ref)
    with pytest.raises(TypeError, match="integer"):
        token_logprobs(m, ids.float())


@pytest.fixture(scope="module")
def tiny():
    tok = BPETokenizer.train("to be or not to be that is the question " * 20, vocab_size=280)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=32, n_heads=2, n_layers=1,
                               dropout=0.0))
    recs = [{"instruction": "Say a word.", "input": w, "output": w} for w in ("be", "not", "that", "is")]
    return tok, model, recs


def test_equal_rewards_teach_nothing(tiny):
    tok, model, recs = tiny
    policy = copy.deepcopy(model)
    hist = train_grpo(policy, model, tok, recs, lambda rec, text: 1.0, steps=2, group_size=4, prompts_per_step=2,
                      lr=1e-2)
    assert hist["informative"] == [0.0, 0.0] and hist["reward"] == [1.0, 1.0]
    for p, q in zip(policy.parameters(), model.parameters()):
        assert torch.equal(p, q)                                    # zero advantage, zero KL: no update


def test_train_grpo_updates_the_policy_not_the_reference(tiny):
    tok, model, recs = tiny
    before = copy.deepcopy(model.state_dict())
    policy = copy.deepcopy(model)
    coin = random.Random(0)
    hist = train_grpo(policy, model, tok, recs, lambda rec, text: float(coin.random() < 0.5), steps=3, group_size=4,
                      prompts_per_step=2, lr=1e-2, seed=1)
    assert len(hist["loss"]) == 3 and all(0 <= r <= 1 for r in hist["reward"])
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), model.parameters()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert hist["kl"][0] == 0.0                                     # the first step starts at the reference


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(group_size=1), "group_size"), (dict(prompts_per_step=0), "prompts_per_step")])
def test_bad_arguments(tiny, kwargs, match):
    tok, model, recs = tiny
    args = dict(steps=1, group_size=2, prompts_per_step=1) | kwargs
    with pytest.raises(ValueError, match=match):
        train_grpo(model, model, tok, recs, lambda r, t: 0.0, **args)


def test_bad_loss_inputs():
    logps, mask, adv = _inputs()
    with pytest.raises(ValueError, match="shape"):
        grpo_loss(logps, logps[:, :3], logps, adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logps, logps, logps, adv[:2], mask)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logps, logps, logps, adv, mask, beta=-1.0)
    with pytest.raises(ValueError, match="answer token"):
        grpo_loss(logps, logps, logps, adv, torch.zeros_like(mask))
