"""Tests for shared.train and shared.checkpoint (Chapter 5). Tiny models: the file runs in seconds."""

import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import shared.checkpoint as ckpt_mod
from shared.checkpoint import load_checkpoint, load_model, save_checkpoint
from shared.model import GPTConfig, GPTModel
from shared.train import (
    TrainConfig,
    bits_per_byte,
    check_finite,
    configure_optimizer,
    cross_entropy_loss,
    estimate_loss,
    lr_at,
    perplexity,
    train,
    train_step,
)

TINY = dict(vocab_size=32, context_length=8, d_model=16, n_heads=2, n_layers=1, dropout=0.0)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(**{**TINY, **overrides}))


def random_batches(seed=0, batch_size=4, T=8, vocab=32):
    g = torch.Generator().manual_seed(seed)

    def get_batch():
        x = torch.randint(0, vocab, (batch_size, T + 1), generator=g)
        return x[:, :-1], x[:, 1:]
    return get_batch


# ----------------------------------------------------------------------------- loss

def test_cross_entropy_matches_hand_computation_and_torch():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    by_hand = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    loss = cross_entropy_loss(logits, targets)
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 5), targets.view(-1)))
    targets[0, 0] = -100  # ignored position
    torch.testing.assert_close(cross_entropy_loss(logits, targets),
                               F.cross_entropy(logits.view(-1, 5), targets.view(-1), ignore_index=-100))


def test_cross_entropy_rejects_bad_shapes_and_units():
    with pytest.raises(ValueError, match="logits"):
        cross_entropy_loss(torch.randn(2, 5), torch.zeros(2, dtype=torch.long))
    assert perplexity(math.log(7)) == pytest.approx(7)
    assert bits_per_byte(math.log(2), n_tokens=10, n_bytes=20) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0, 10)


def test_untrained_loss_is_near_log_vocab():
    model = tiny_model()
    x, y = random_batches()()
    assert abs(cross_entropy_loss(model(x), y).item() - math.log(32)) < 0.1


# ----------------------------------------------------------------------------- schedule

def test_lr_at_warmup_cosine_and_end():
    kw = dict(max_lr=1.0, warmup_steps=10, max_steps=110, min_lr=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)        # (0 + 1) / 10
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)        # end of warmup
    assert lr_at(10, **kw) == pytest.approx(1.0)       # cosine starts at max_lr
    assert lr_at(60, **kw) == pytest.approx(0.55)      # half way: min + (max - min) / 2
    assert lr_at(35, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, **kw) == pytest.approx(0.1)      # end
    assert lr_at(500, **kw) == pytest.approx(0.1)      # past the end
    assert lr_at(0, max_lr=1.0, warmup_steps=0, max_steps=10) == pytest.approx(1.0)
    for bad in (dict(step=-1), dict(step=0, warmup_steps=200)):
        with pytest.raises(ValueError):
            lr_at(**{**dict(step=0, **kw), **bad})


# ----------------------------------------------------------------------------- optimizer

def test_configure_optimizer_groups():
    model = tiny_model(n_layers=2, qkv_bias=True)
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay_names == {f"blocks.{i}.{m}.weight" for i in range(2)
                           for m in ("attn.qkv", "attn.out_proj", "mlp.fc", "mlp.proj")}
    assert {"tok_emb.weight", "pos_emb.weight", "final_norm.weight", "final_norm.bias",
            "blocks.0.ln1.weight", "blocks.1.attn.qkv.bias", "blocks.0.mlp.fc.bias"} <= no_decay_names
    all_params = decay["params"] + no_decay["params"]
    assert len({id(p) for p in all_params}) == len(all_params)  # tied weight counted once
    assert sum(p.numel() for p in all_params) == model.num_parameters()


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_configure_optimizer_step_equals_hand_built_adamw(fused):
    """Also the fused kernel a GPU run uses (torch has it on the CPU too), against plain AdamW."""
    model_a, model_b = tiny_model(), tiny_model()
    opt_a = configure_optimizer(model_a, lr=1e-2, weight_decay=0.1, fused=fused)
    assert bool(opt_a.param_groups[0].get("fused")) == fused
    params_b = dict(model_b.named_parameters())
    decay = [p for n, p in params_b.items() if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in params_b.items() if not (p.dim() >= 2 and "emb" not in n)]
    opt_b = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x, y = random_batches()()
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        for _ in range(2):
            cross_entropy_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, msg=n)


# ----------------------------------------------------------------------------- training step

def test_grad_accumulation_equals_large_batch():
    """SGD with lr=1 makes the parameter change equal to minus the gradient."""
    big = random_batches(seed=3, batch_size=8)()
    chunks = iter([(big[0][i:i + 2], big[1][i:i + 2]) for i in range(0, 8, 2)])
    deltas = []
    for accum, get_batch in ((1, lambda: big), (4, lambda: next(chunks))):
        model = tiny_model()
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        cfg = TrainConfig(max_steps=1, max_lr=1.0, min_lr=1.0, warmup_steps=0, grad_accum_steps=accum,
                          grad_clip=None)
        train_step(model, opt, get_batch, 0, cfg)
        deltas.append([b - p.detach() for b, p in zip(before, model.parameters())])
    for d1, d4 in zip(*deltas):
        torch.testing.assert_close(d4, d1, rtol=1e-4, atol=1e-6)
    assert any(d.abs().max() > 0 for d in deltas[0])


def test_loss_falls_on_a_fixed_batch():
    model = tiny_model()
    fixed = random_batches(seed=1)()
    opt = configure_optimizer(model, lr=1e-2)
    hist = train(model, opt, lambda: fixed, TrainConfig(max_steps=40, max_lr=1e-2, warmup_steps=5,
                                                        eval_interval=0))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0], hist["loss"][::10]
    assert len(hist["step"]) == 40 and hist["lr"][0] == pytest.approx(2e-3)


def test_clipping_bounds_the_gradient_norm():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
    opt.register_step_pre_hook(hook)
    cfg = TrainConfig(max_steps=1, warmup_steps=0, grad_clip=0.01)
    out = train_step(model, opt, random_batches(), 0, cfg)
    assert out["grad_norm"] > 0.01  # the norm before clipping
    assert seen[0] <= 0.01 * (1 + 1e-4)


def test_check_finite_and_train_stops_on_nan():
    check_finite(torch.tensor(1.0), 0)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(FloatingPointError, match="not finite"):
            check_finite(torch.tensor(bad), 3)
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight.fill_(float("inf"))
    opt = configure_optimizer(model, lr=1e-3)
    with pytest.raises(FloatingPointError, match=r"not finite\) at step 0"):
        train(model, opt, random_batches(), TrainConfig(max_steps=3, warmup_steps=1, eval_interval=0))


def test_estimate_loss_restores_mode():
    model = tiny_model(dropout=0.5)
    model.train()
    loss = estimate_loss(model, random_batches(), eval_iters=2)
    assert model.training and math.isfinite(loss)
    model.eval()
    estimate_loss(model, random_batches(), eval_iters=1)
    assert not model.training


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_roundtrip_with_optimizer_and_rng(tmp_path):
    model = tiny_model()
    opt = configure_optimizer(model, lr=1e-2)
    cfg = TrainConfig(max_steps=10, max_lr=1e-2, warmup_steps=2, eval_interval=0)
    gb = lambda: random_batches(seed=torch.randint(0, 10**6, ()).item())()  # noqa: E731 (global RNG)
    for s in range(3):
        train_step(model, opt, gb, s, cfg)
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, step=3, extra={"pos": 3})
    random.random(), np.random.rand()
    expected = [train_step(model, opt, gb, s, cfg)["loss"] for s in (3, 4)]
    expected_rng = (random.random(), np.random.rand())

    model2 = tiny_model(seed=1)
    opt2 = configure_optimizer(model2, lr=1e-2)
    ck = load_checkpoint(path, model=model2, optimizer=opt2, restore_rng=True)
    assert ck["step"] == 3 and ck["extra"] == {"pos": 3} and ck["config"]["d_model"] == 16
    random.random(), np.random.rand()
    got = [train_step(model2, opt2, gb, s, cfg)["loss"] for s in (3, 4)]
    assert got == expected
    assert (random.random(), np.random.rand()) == expected_rng
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q)
    loaded = load_model(path)
    assert not loaded.training and loaded.cfg.n_layers == 1


def test_train_resume_equals_uninterrupted_run(tmp_path):
    def run(max_steps, path, resume):
        torch.manual_seed(0)
        model = GPTModel(GPTConfig(**TINY))
        opt = configure_optimizer(model, lr=1e-2)
        tokens = np.random.default_rng(0).integers(0, 32, 500).astype(np.uint16)
        from shared.data import sample_windows
        gb = lambda: sample_windows(tokens, 4, 8)  # noqa: E731 (draws from torch's global RNG)
        cfg = TrainConfig(max_steps=max_steps, max_lr=1e-2, warmup_steps=2, eval_interval=2, eval_iters=1,
                          checkpoint_path=str(path), checkpoint_interval=3, resume=resume)
        return train(model, opt, gb, cfg)

    full = run(6, tmp_path / "a.pt", False)
    run(3, tmp_path / "b.pt", False)                # "crashes" after its step-3 checkpoint
    torch.manual_seed(123)                          # the resumed process starts with other RNG state
    resumed = run(6, tmp_path / "b.pt", True)
    assert resumed["loss"] == full["loss"] and resumed["val_loss"] == full["val_loss"]
    assert resumed["train_loss"] == full["train_loss"]


def test_corrupt_or_truncated_checkpoint_gives_value_error(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", model=tiny_model())
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    torch.save({"hello": 1}, tmp_path / "foreign.pt")
    for name in ("trunc.pt", "junk.pt", "foreign.pt"):
        with pytest.raises(ValueError, match="is not a valid checkpoint"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def damage_tensor_bytes(path, n: int = 16) -> None:
    """Overwrite ``n`` bytes in the middle of the largest tensor record of a torch.save zip,
    leaving the zip structure intact (as a bad disk or transfer can)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[start:start + n] = bytes(b ^ 0x5A for b in raw[start:start + n])
    path.write_bytes(bytes(raw))


def test_damaged_tensor_bytes_are_caught_by_the_checksum(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=configure_optimizer(model, lr=1e-3), step=2)
    assert load_checkpoint(path)["checksum"].startswith("sha256:")
    damage_tensor_bytes(path)
    torch.load(path, weights_only=True)  # torch itself does not notice: the zip is intact
    with pytest.raises(ValueError, match="do not match the checksum"):
        load_checkpoint(path)


def test_a_checkpoint_without_checksum_still_loads(tmp_path):
    """Files written before checksums existed (version 1) load as before."""
    path = save_checkpoint(tmp_path / "ck.pt", model=tiny_model(), step=1)
    state = torch.load(path, weights_only=True)
    del state["checksum"]
    state["version"] = 1
    torch.save(state, path)
    assert load_checkpoint(path, model=tiny_model())["step"] == 1


def test_mismatched_model_names_the_keys(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", model=tiny_model(n_layers=2))
    with pytest.raises(ValueError, match=r"unexpected keys: blocks\.1\."):
        load_checkpoint(path, model=tiny_model(n_layers=1))
    with pytest.raises(ValueError, match=r"missing keys: blocks\.2\."):
        load_checkpoint(path, model=tiny_model(n_layers=3))
    with pytest.raises(ValueError, match=r"mis-shaped keys: tok_emb\.weight"):
        load_checkpoint(path, model=tiny_model(n_layers=2, vocab_size=40))
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, optimizer=configure_optimizer(tiny_model(n_layers=2), lr=1e-3))


def test_atomic_write_leaves_no_temp_files_and_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model=tiny_model(), step=1)
    save_checkpoint(path, model=tiny_model(), step=2)
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=tiny_model(), step=3)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]
    assert load_checkpoint(path)["step"] == 2


# ----------------------------------------------------------------------------- pretrained course model

def test_course_model_trains_saves_then_loads(tmp_path, monkeypatch, capsys):
    import shared.pretrained as pre

    monkeypatch.setattr(pre, "CHECKPOINT_DIR", tmp_path)
    tiny = dict(vocab_size=300, text_chars=20_000, val_chars=5_000, model=dict(context_length=16, d_model=16, n_heads=2, n_layers=1),
                batch_size=4, max_steps=3, max_lr=1e-3, warmup_steps=1, weight_decay=0.1, grad_clip=1.0,
                eval_interval=0, eval_iters=1, seed=0)
    monkeypatch.setitem(pre.RECIPES, "smoke", tiny)
    model, tok = pre.course_model(device="cpu")
    assert "No Chapter 5 checkpoint found" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["course_bpe_smoke.json", "course_gpt_smoke.pt"]
    model2, tok2 = pre.course_model(device="cpu")
    assert "Using Chapter 5 checkpoint" in capsys.readouterr().out
    assert not model2.training and tok2.vocab_size == model2.cfg.vocab_size == 300
    assert tok2.encode("ROMEO: hi") == tok.encode("ROMEO: hi")
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q)
    (tmp_path / "course_gpt_smoke.pt").write_bytes(b"garbage")
    pre.course_model(device="cpu")
    assert "is not a valid checkpoint" in capsys.readouterr().out


def test_mixed_batch_draws_each_window_from_a_source_in_proportion():
    from shared.pretrained import mixed_batch

    a, b = np.zeros(1000, dtype=np.uint16), np.ones(1000, dtype=np.uint16)  # source = the token value
    g = torch.Generator().manual_seed(0)
    rows = torch.cat([mixed_batch([(a, 0.7), (b, 0.3)], 50, 8, generator=g)[0] for _ in range(40)])
    frac_b = rows[:, 0].float().mean().item()
    assert 0.25 < frac_b < 0.35, frac_b  # 2,000 windows: 3 standard errors is 0.03
    assert ((rows == 0).all(1) | (rows == 1).all(1)).all(), "a window must come from one source"
    x, y = mixed_batch([(np.arange(100, dtype=np.uint16), 1.0)], 4, 8, generator=g)
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape == (4, 8)
    for bad in ([(a, 0.5), (b, 0.4)], [(a, 1.2), (b, -0.2)], []):
        with pytest.raises(ValueError, match="sources"):
            mixed_batch(bad, 4, 8)
    with pytest.raises(ValueError, match="batch_size"):
        mixed_batch([(a, 1.0)], 0, 8)


def test_a_recipe_with_the_kjv_trains_its_tokenizer_on_both_and_validates_on_the_plays():
    from shared.data import load_shakespeare
    from shared.pretrained import prepare_data

    rec = dict(vocab_size=300, text_chars=30_000, val_chars=5_000, kjv_weight=0.3)
    data = prepare_data(rec)
    kjv = data["tokenizer"].decode(data["kjv_ids"][:2000].tolist())
    assert "LORD" in kjv or "God" in kjv
    assert data["tokenizer"].decode(data["val_ids"].tolist()) == load_shakespeare("val")[:5_000]
    assert prepare_data({**rec, "kjv_weight": 0.0})["kjv_ids"] is None
    with pytest.raises(ValueError, match="kjv_weight"):
        prepare_data({**rec, "kjv_weight": 1.0})


def test_shuffled_batches_are_full_and_cover_every_index_once_per_epoch():
    from shared.train import shuffled_batches

    b = shuffled_batches(7, 3, random.Random(0))
    flat = [i for _ in range(7) for i in next(b)]                  # 21 indices = 3 epochs of 7
    assert all(sorted(flat[e * 7:(e + 1) * 7]) == list(range(7)) for e in range(3))
    assert flat[:7] != list(range(7)), "each epoch is shuffled"
    again = shuffled_batches(7, 3, random.Random(0))
    assert [next(again) for _ in range(7)] == [flat[k:k + 3] for k in range(0, 21, 3)], "the seed fixes the order"
