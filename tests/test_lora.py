"""LoRA invariants (shared.lora): zero-init equivalence, merging, the trainable set, adapters."""

import pytest
import torch
from torch import nn

from shared.lora import (
    LoRALinear,
    apply_lora,
    count_trainable,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)
from shared.model import GPTConfig, GPTModel

CFG = GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=4, n_layers=2, qkv_bias=True)


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def idx(seed=1):
    return torch.randint(0, CFG.vocab_size, (2, 10), generator=torch.Generator().manual_seed(seed))


def randomise_B(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_lora_linear_formula_and_zero_init():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    lora = LoRALinear(base, rank=3, alpha=6)
    x = torch.randn(4, 5, 12)
    assert torch.equal(lora.lora_B, torch.zeros(7, 3))
    assert lora.lora_A.abs().sum() > 0, "A must be random, or B never gets a gradient"
    torch.testing.assert_close(lora(x), base(x), rtol=0, atol=0)
    with torch.no_grad():
        lora.lora_B.normal_()
    expected = x @ (base.weight + 2.0 * lora.lora_B @ lora.lora_A).T + base.bias  # alpha/rank = 2
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)


def test_zero_init_model_equals_base():
    model, ref = tiny(), tiny()
    apply_lora(model, rank=4, alpha=8)
    assert torch.equal(model(idx()), ref(idx()))


def test_gradient_reaches_B_but_not_base():
    model = apply_lora(tiny(), rank=2, alpha=4)
    model(idx()).sum().backward()
    lora = model.blocks[0].attn.qkv
    assert lora.lora_B.grad is not None and lora.lora_B.grad.abs().sum() > 0
    assert lora.base.weight.grad is None


def test_trainable_set_and_count():
    model = apply_lora(tiny(), rank=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    C, r, L = CFG.d_model, 4, CFG.n_layers
    per_block = r * (C + 3 * C) + r * (C + C) + r * (C + 4 * C) + r * (4 * C + C)  # qkv, out, fc, proj
    assert count_trainable(model) == L * per_block == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B")))
    assert len(trainable) == 2 * 4 * L


def test_target_modules_and_errors():
    model = apply_lora(tiny(), rank=2, alpha=2, target_modules=("attn.qkv",))
    assert isinstance(model.blocks[1].attn.qkv, LoRALinear)
    assert isinstance(model.blocks[1].mlp.fc, nn.Linear) and not isinstance(model.blocks[1].mlp.fc, LoRALinear)
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        apply_lora(tiny(), rank=2, alpha=2, target_modules=("attn.query",))
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=5, alpha=1)
    with pytest.raises(ValueError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), rank=1, alpha=1)


def test_merge_equivalence_and_plain_linear():
    model = apply_lora(tiny(), rank=4, alpha=8)
    randomise_B(model)
    before = model(idx())
    assert not torch.allclose(before, tiny()(idx())), "random B should change the output"
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny().state_dict()), "merged model has the original keys"
    torch.testing.assert_close(model(idx()), before, rtol=1e-5, atol=1e-5)


def test_adapter_save_load_roundtrip(tmp_path):
    model = apply_lora(tiny(), rank=4, alpha=8)
    randomise_B(model)
    sd = lora_state_dict(model)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in sd)
    assert sum(v.numel() for v in sd.values()) == count_trainable(model)
    torch.save(sd, tmp_path / "adapter.pt")
    other = apply_lora(tiny(), rank=4, alpha=8)  # same base, fresh adapters
    load_lora_state_dict(other, torch.load(tmp_path / "adapter.pt", weights_only=True))
    assert torch.equal(other(idx()), model(idx()))


def test_adapter_mismatch_errors():
    sd = lora_state_dict(apply_lora(tiny(), rank=4, alpha=8))
    with pytest.raises(ValueError, match=r"shape mismatch for 'blocks\.0\.attn\.qkv\.lora_A'"):
        load_lora_state_dict(apply_lora(tiny(), rank=2, alpha=4), sd)
    with pytest.raises(ValueError, match="unexpected adapter key"):
        load_lora_state_dict(apply_lora(tiny(), rank=4, alpha=8, target_modules=("attn.qkv",)), sd)
    partial = {k: v for k, v in sd.items() if "mlp" not in k}
    with pytest.raises(ValueError, match="missing key"):
        load_lora_state_dict(apply_lora(tiny(), rank=4, alpha=8), partial)
    with pytest.raises(ValueError, match="no LoRA layers"):
        load_lora_state_dict(tiny(), sd)
