"""shared.prune: magnitude pruning (global / per layer) and exact structured head/neuron removal."""

import copy

import pytest
import torch

from shared.generate import generate
from shared.model import GPTConfig, GPTModel
from shared.prune import (PRUNABLE, apply_masks, head_scores, magnitude_prune, neuron_scores, prune_heads,
                          prune_neurons, sparsity)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models run on one thread


def model(seed=0):
    torch.manual_seed(seed)
    m = GPTModel(GPTConfig(vocab_size=50, context_length=32, d_model=32, n_heads=4, n_layers=2)).eval()
    with torch.no_grad():
        m.blocks[1].mlp.fc.weight.mul_(5)  # one layer with larger weights: global != per layer
    return m


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("s", [0.0, 0.3, 0.9])
def test_magnitude_prune_hits_the_sparsity(scope, s):
    m = model()
    masks = magnitude_prune(m, s, scope)
    assert sparsity(m) == pytest.approx(s, abs=1e-3)
    params = dict(m.named_parameters())
    for name, mask in masks.items():
        assert name.endswith(PRUNABLE)
        if scope == "layer":
            assert 1 - mask.float().mean() == pytest.approx(s, abs=1e-2)
        kept, dropped = params[name][mask].abs(), params[name][~mask].abs()
        if scope == "layer" and dropped.numel() and kept.numel():
            assert dropped.max() <= kept.min()  # the smallest ones went
    assert int((m.tok_emb.weight == 0).sum()) == 0


def test_global_prunes_small_layers_more():
    m = model()
    masks = magnitude_prune(m, 0.5, "global")
    big = 1 - masks["blocks.1.mlp.fc.weight"].float().mean()      # weights 5x larger
    small = 1 - masks["blocks.0.mlp.proj.weight"].float().mean()  # GPT-2's smaller init (1/sqrt(2L))
    assert big < 0.2 and small > 0.6
    w = torch.cat([p.abs().flatten() for n, p in model().named_parameters() if n.endswith(PRUNABLE)])
    thr = torch.sort(w).values[int(0.5 * w.numel())]
    params = dict(m.named_parameters())
    ref = model()
    for name, mask in masks.items():  # global: kept weights are those at or above one threshold
        orig = dict(ref.named_parameters())[name].abs()
        assert bool((orig[mask] >= thr - 1e-7).all()) and bool((orig[~mask] <= thr + 1e-7).all())
        assert torch.equal(params[name] == 0, ~mask)


def test_masks_survive_a_training_step():
    m = model().train()
    masks = magnitude_prune(m, 0.7)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x = torch.randint(0, 50, (2, 16))
    m(x).logsumexp(-1).mean().backward()
    opt.step()
    assert sparsity(m) < 0.7  # the optimizer revives weights ...
    apply_masks(m, masks)
    assert sparsity(m) == pytest.approx(0.7, abs=1e-3)  # ... until the masks are applied again


def test_bad_sparsity_and_scope():
    for bad in (1.0, -0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="sparsity"):
            magnitude_prune(model(), bad)
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(model(), 0.5, scope="row")


def test_prune_heads_equals_zeroing_their_output():
    m, idx = model(), torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0))
    ref = copy.deepcopy(m)
    drop = {0: [1, 3], 1: [0, 2]}
    with torch.no_grad():  # oracle: the head's columns of out_proj set to zero
        for layer, hs in drop.items():
            for h in hs:
                ref.blocks[layer].attn.out_proj.weight[:, h * 8:(h + 1) * 8] = 0
    n_before = m.num_parameters()
    prune_heads(m, drop)
    assert m.blocks[0].attn.qkv.weight.shape == (3 * 16, 32) and m.blocks[0].attn.out_proj.weight.shape == (32, 16)
    assert m.num_parameters() == n_before - 2 * 2 * (3 * 8 * 32 + 8 * 32)
    with torch.no_grad():
        torch.testing.assert_close(m(idx), ref(idx), atol=1e-5, rtol=1e-5)
    # the KV cache still works: cached greedy generation equals uncached
    assert torch.equal(generate(m, idx[:1, :5], 10), generate(m, idx[:1, :5], 10, use_cache=False))


def test_prune_neurons_equals_zeroing_them():
    m, idx = model(), torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(m)
    drop = {0: list(range(0, 128, 2)), 1: [5, 6, 7]}
    with torch.no_grad():
        for layer, js in drop.items():
            ref.blocks[layer].mlp.proj.weight[:, js] = 0
    prune_neurons(m, drop)
    assert m.blocks[0].mlp.fc.weight.shape == (64, 32) and m.blocks[1].mlp.proj.weight.shape == (32, 125)
    with torch.no_grad():
        torch.testing.assert_close(m(idx), ref(idx), atol=1e-5, rtol=1e-5)


def test_scores_and_structured_bad_input():
    m = model()
    assert head_scores(m).shape == (2, 4) and [s.shape for s in neuron_scores(m)] == [(128,), (128,)]
    with pytest.raises(ValueError, match="same number of heads"):
        prune_heads(model(), {0: [1]})
    with pytest.raises(ValueError, match="all 4"):
        prune_heads(model(), {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="indices"):
        prune_neurons(model(), {0: [128]})
    with pytest.raises(ValueError, match="layer"):
        prune_neurons(model(), {5: [1]})
