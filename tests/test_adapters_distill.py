"""Bottleneck adapters (shared.adapters) and the distillation loss (shared.distill)."""

import math

import pytest
import torch
import torch.nn.functional as F

from shared.adapters import BottleneckAdapter, WithAdapter, adapter_param_count, apply_adapters
from shared.distill import distillation_loss
from shared.generate import generate
from shared.lora import count_trainable
from shared.model import GPTConfig, GPTModel

CFG = GPTConfig(vocab_size=50, context_length=16, d_model=16, n_heads=2, n_layers=2)


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def test_adapter_starts_as_identity_and_learns():
    a = BottleneckAdapter(16, 4)
    h = torch.randn(2, 5, 16)
    assert torch.equal(a(h), h)
    a(h).pow(2).sum().backward()
    assert a.up.weight.grad.abs().sum() > 0          # up gets a gradient although it is zero
    with pytest.raises(ValueError, match="bottleneck"):
        BottleneckAdapter(16, 0)


def test_apply_adapters_identity_count_and_frozen_base():
    base, model = tiny(), apply_adapters(tiny(), bottleneck=4)
    idx = torch.randint(0, CFG.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(idx), base(idx), atol=1e-6)
    assert count_trainable(model) == adapter_param_count(16, 4, 2) == 2 * (2 * (2 * 16 * 4 + 4 + 16) + 64) + 32
    assert count_trainable(apply_adapters(tiny(), 4, train_layernorm=False)) == adapter_param_count(16, 4, 2, False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n or "ln" in n or "norm" in n for n in trainable)
    assert not model.tok_emb.weight.requires_grad and not model.blocks[0].attn.inner.qkv.weight.requires_grad
    with pytest.raises(ValueError, match="already"):
        apply_adapters(model, 4)


def test_adapters_train_and_generate_with_the_kv_cache():
    model = apply_adapters(tiny(), bottleneck=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BottleneckAdapter):
                m.up.weight.normal_(std=0.1)
    idx = torch.randint(0, CFG.vocab_size, (1, 4))
    cached = generate(model, idx, 6, use_cache=True)
    plain = generate(model, idx, 6, use_cache=False)
    assert torch.equal(cached, plain)
    assert isinstance(model.blocks[0].mlp, WithAdapter)


def test_distillation_loss_against_torch_kl_and_ce():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    y = torch.randint(0, 7, (2, 5), generator=g)
    for T in (1.0, 2.0, 4.0):
        kl = F.kl_div(F.log_softmax(s / T, -1).flatten(0, 1), F.log_softmax(t / T, -1).flatten(0, 1),
                      log_target=True, reduction="batchmean")
        assert distillation_loss(s, t, y, temperature=T, alpha=1.0).item() == pytest.approx(T * T * kl.item(), rel=1e-5)
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten())
    assert distillation_loss(s, t, y, alpha=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    mixed = distillation_loss(s, t, y, temperature=2.0, alpha=0.3)
    assert mixed.item() == pytest.approx(0.3 * distillation_loss(s, t, y, 2.0, 1.0).item() + 0.7 * ce.item(), rel=1e-5)
    assert distillation_loss(t, t, None, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_ignores_positions_and_validates():
    s, t = torch.randn(1, 4, 5, requires_grad=True), torch.randn(1, 4, 5)
    y = torch.tensor([[1, -100, 2, -100]])
    full = distillation_loss(s[:, [0, 2]], t[:, [0, 2]], y[:, [0, 2]], alpha=0.5)
    assert distillation_loss(s, t, y, alpha=0.5).item() == pytest.approx(full.item(), rel=1e-6)
    distillation_loss(s, t, y).backward()
    assert s.grad[0, 1].abs().sum() == 0 and s.grad[0, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, y, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, t, y, alpha=1.5)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(s, t, None, alpha=0.5)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, t[..., :4], y)
    with pytest.raises(ValueError, match="ignore_index"):
        distillation_loss(s, t, torch.full((1, 4), -100))
    # the T^2 factor: the soft term's gradient keeps its size as T grows (Hinton et al. 2015, 2.1)
    big = torch.randn(64, 50, generator=torch.Generator().manual_seed(1)) * 0.1
    grads = []
    for T in (2.0, 8.0):
        x = big.clone().requires_grad_(True)
        distillation_loss(x, big.flip(0), None, temperature=T, alpha=1.0).backward()
        grads.append(x.grad.norm().item())
    assert 0.5 < grads[1] / grads[0] < 2.0
