"""shared.weights: GPT-2 checkpoints in the Hugging Face layout, against transformers as the oracle.

Offline: every checkpoint is a tiny randomly initialised GPT2LMHeadModel saved to tmp_path.
"""

import json
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from shared.model import GPTConfig, GPTModel
from shared.weights import (
    CheckpointError,
    HubUnavailableError,
    MissingTensorError,
    TensorShapeError,
    UnexpectedTensorError,
    hf_name_map,
    hub_available,
    load_gpt2,
    save_hf,
)

transformers = pytest.importorskip("transformers")

TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, n_positions=128)


def _hf_model(seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY)).eval()
    # Random-init biases and LayerNorm affine terms are 0 and 1: perturb them so that a
    # loader that drops or swaps them cannot pass.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_model():
    return _hf_model()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, TINY["vocab_size"], (3, 40), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def st_dir(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "st")
    return tmp_path / "st"


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _our_logits(model, ids):
    with torch.no_grad():
        return model(ids)


def test_safetensors_logits_match_transformers(st_dir, hf_model, ids):
    assert (st_dir / "model.safetensors").is_file()
    model = load_gpt2(st_dir)
    assert not model.training
    assert model.cfg == GPTConfig(vocab_size=1000, context_length=128, d_model=64, n_heads=4, n_layers=2,
                                  dropout=0.0, qkv_bias=True)
    torch.testing.assert_close(_our_logits(model, ids), _hf_logits(hf_model, ids), atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.tok_emb.weight


def test_pytorch_bin_logits_match_transformers(tmp_path, hf_model, ids):
    # transformers 5 always writes safetensors, so write the legacy pickle layout by hand:
    # config.json + torch.save(state_dict) (which includes the tied lm_head.weight).
    d = tmp_path / "bin"
    hf_model.config.save_pretrained(d)
    torch.save(hf_model.state_dict(), d / "pytorch_model.bin")
    assert not (d / "model.safetensors").exists()
    model = load_gpt2(str(d))
    torch.testing.assert_close(_our_logits(model, ids), _hf_logits(hf_model, ids), atol=1e-5, rtol=0)


def test_openai_layout_without_prefix_and_with_mask_buffers(tmp_path, hf_model, ids):
    # OpenAI's upload (GPT2Model): no "transformer." prefix, and the causal-mask buffers
    # h.{i}.attn.bias / masked_bias stored alongside the weights. Both must be accepted.
    d = tmp_path / "openai"
    hf_model.config.save_pretrained(d)
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf_model.state_dict().items()
          if k != "lm_head.weight"}
    for i in range(TINY["n_layer"]):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(128, 128)).view(1, 1, 128, 128)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    torch.testing.assert_close(_our_logits(load_gpt2(d), ids), _hf_logits(hf_model, ids), atol=1e-5, rtol=0)


def test_conv1d_weights_are_transposed(st_dir, hf_model):
    model = load_gpt2(st_dir)
    hf_sd = hf_model.state_dict()
    ours = model.state_dict()
    for hf_name, (name, transpose) in hf_name_map(2).items():
        expected = hf_sd["transformer." + hf_name]
        torch.testing.assert_close(ours[name], expected.t() if transpose else expected, rtol=0, atol=0)
    assert sum(t for _, t in hf_name_map(2).values()) == 4 * 2  # c_attn, c_proj, c_fc, mlp.c_proj


def test_save_hf_round_trips_through_transformers(tmp_path, ids):
    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=1000, context_length=128, d_model=64, n_heads=4, n_layers=2, qkv_bias=True)
    ours = GPTModel(cfg).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    out = save_hf(ours, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    stored = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" not in stored and "transformer.wte.weight" in stored  # tied: stored once
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    torch.testing.assert_close(_hf_logits(hf, ids), _our_logits(ours, ids), atol=1e-5, rtol=0)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    back = load_gpt2(out)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)


def test_save_hf_without_qkv_bias_writes_zero_bias(tmp_path, ids):
    torch.manual_seed(4)
    cfg = GPTConfig(vocab_size=1000, context_length=128, d_model=64, n_heads=4, n_layers=2, qkv_bias=False)
    ours = GPTModel(cfg).eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(save_hf(ours, tmp_path / "nobias")).eval()
    torch.testing.assert_close(_hf_logits(hf, ids), _our_logits(ours, ids), atol=1e-5, rtol=0)


def test_save_hf_refuses_untied_head(tmp_path):
    model = GPTModel(GPTConfig(vocab_size=100, context_length=16, d_model=32, n_heads=4, n_layers=1))
    model.lm_head.weight = torch.nn.Parameter(torch.randn(100, 32))
    with pytest.raises(ValueError, match="tied"):
        save_hf(model, tmp_path / "untied")


def _rewrite(st_dir, edit):
    sd = load_file(str(st_dir / "model.safetensors"))
    edit(sd)
    save_file(sd, str(st_dir / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named(st_dir):
    _rewrite(st_dir, lambda sd: sd.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(MissingTensorError, match=r"h\.1\.mlp\.c_fc\.bias") as e:
        load_gpt2(st_dir)
    assert e.value.names == ["h.1.mlp.c_fc.bias"]


def test_unexpected_tensor_is_named(st_dir):
    _rewrite(st_dir, lambda sd: sd.update({"transformer.h.2.ln_1.weight": torch.ones(64)}))
    with pytest.raises(UnexpectedTensorError, match=r"h\.2\.ln_1\.weight") as e:
        load_gpt2(st_dir)
    assert e.value.names == ["h.2.ln_1.weight"]


def test_misshaped_tensor_is_named(st_dir):
    # Transposed Conv1D weight: [out, in] instead of [in, out].
    _rewrite(st_dir, lambda sd: sd.update({"transformer.h.0.attn.c_attn.weight":
                                           sd["transformer.h.0.attn.c_attn.weight"].t().contiguous()}))
    with pytest.raises(TensorShapeError, match=r"h\.0\.attn\.c_attn\.weight.*\(192, 64\).*\(64, 192\)") as e:
        load_gpt2(st_dir)
    assert e.value.name == "h.0.attn.c_attn.weight"


def test_config_disagreeing_with_weights(st_dir):
    cfg = json.loads((st_dir / "config.json").read_text())
    cfg["n_embd"] = 128
    (st_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TensorShapeError, match="wte.weight"):
        load_gpt2(st_dir)


def test_corrupted_safetensors(st_dir):
    data = (st_dir / "model.safetensors").read_bytes()
    (st_dir / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*corrupted"):
        load_gpt2(st_dir)


def test_corrupted_pytorch_bin(tmp_path, hf_model):
    d = tmp_path / "badbin"
    hf_model.config.save_pretrained(d)
    (d / "pytorch_model.bin").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin"):
        load_gpt2(d)


def test_pickled_code_is_refused(tmp_path, hf_model):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    d = tmp_path / "evil"
    hf_model.config.save_pretrained(d)
    torch.save({"wte.weight": torch.zeros(1), "x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_gpt2(d)


@pytest.mark.parametrize("key, value, match", [
    ("activation_function", "relu", "activation_function"),
    ("n_inner", 100, "n_inner"),
    ("model_type", "llama", "model_type"),
    ("n_head", 5, "divisible"),
])
def test_unsupported_config(st_dir, key, value, match):
    cfg = json.loads((st_dir / "config.json").read_text())
    cfg[key] = value
    (st_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        load_gpt2(st_dir)


def test_missing_files(tmp_path, st_dir):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_gpt2(tmp_path / "does-not-exist")
    (st_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_gpt2(st_dir)
    (st_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_gpt2(st_dir)


def test_offline_model_id_gives_clear_error(monkeypatch, tmp_path):
    # Force offline mode and an empty cache: no network access is attempted.
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HubUnavailableError, match="local directory"):
        load_gpt2("gpt2", revision="main")
    assert hub_available() is False


def test_hub_available_is_quick_when_unreachable(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert hub_available(timeout=0.5) is False


def test_model_id_downloads_through_huggingface_hub(monkeypatch, st_dir, hf_model, ids):
    """A model id goes through huggingface_hub.snapshot_download (cache, progress bars); no network here."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(st_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_gpt2("openai-community/gpt2", revision="main")
    assert calls and calls[0][0] == "openai-community/gpt2" and "model.safetensors" in calls[0][2]
    assert "*.bin" not in calls[0][2] and "pytorch_model.bin" not in calls[0][2]  # only what is needed
    torch.testing.assert_close(_our_logits(model, ids), _hf_logits(hf_model, ids), atol=1e-5, rtol=0)


def test_model_id_falls_back_to_pytorch_bin(monkeypatch, tmp_path, hf_model, ids):
    import huggingface_hub

    d = tmp_path / "old-repo"
    hf_model.config.save_pretrained(d)
    fetched = []

    def fake_hf_hub_download(repo_id, filename, revision=None, **kwargs):
        torch.save(hf_model.state_dict(), d / filename)
        fetched.append(filename)
        return str(d / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(d))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    model = load_gpt2("some-user/old-gpt2")
    assert fetched == ["pytorch_model.bin"]
    torch.testing.assert_close(_our_logits(model, ids), _hf_logits(hf_model, ids), atol=1e-5, rtol=0)


def test_a_mistyped_relative_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory: runs/gpt2-tpyo"):
        load_gpt2("runs/gpt2-tpyo")


def test_an_offline_hub_id_error_also_says_there_is_no_local_directory(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HubUnavailableError, match="no local directory 'gpt2-tpyo' either"):
        load_gpt2("gpt2-tpyo")
