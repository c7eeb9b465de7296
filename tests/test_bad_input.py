"""Bad input to every public function of the course's core modules raises a clear error.

The standard (CONTRIBUTING.md): a ``ValueError`` or ``TypeError`` whose message names the
argument (or the problem), never a silently wrong result and never a bare error from deep
inside torch, NumPy or json.

``CASES`` holds one or more bad calls per public function or class (``"module.name"``, or
``"module.Class.method"``). :func:`test_every_public_function_has_a_bad_input_case`
enumerates the public API of :data:`MODULES` (``__all__`` plus the public methods that the
classes define) and fails when something has no case, so a new function cannot slip
through. Functions that take no argument, or accept anything, are listed in ``EXEMPT``
with the reason.

The modules of other parts of the course (``checks``, ``grade``, ``exercises``,
``notebooks``, ``pytest_plugin``, and modules added later) have their own tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

MODULES = ("tokenizer", "data", "attention", "model", "weights", "generate", "checkpoint", "train",
           "hardware", "finetune", "instruct", "lora", "runtime", "chat", "grpo")

from shared import attention, checkpoint, data, finetune, generate, hardware, instruct, lora, model  # noqa: E402
from shared import chat, grpo, runtime, tokenizer, train, weights  # noqa: E402
from shared.attention import KVCache, MultiHeadAttention  # noqa: E402
from shared.model import GPTConfig, GPTModel  # noqa: E402
from shared.tokenizer import BPETokenizer  # noqa: E402

SMALL = dict(vocab_size=300, context_length=16, d_model=16, n_heads=2, n_layers=2)


def _model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(**SMALL))


def _tok() -> BPETokenizer:
    return BPETokenizer.train("low lower lowest " * 20, vocab_size=262)


def _mha(**kw) -> MultiHeadAttention:
    args = dict(d_in=8, d_out=8, context_length=8, n_heads=2)
    args.update(kw)
    return MultiHeadAttention(**args)


def _file(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------------
# The cases: (target, call, exception, message regex). ``call`` takes pytest's tmp_path.
# ------------------------------------------------------------------------------------------------

def _saved_tokenizer(tmp_path):
    return _tok().save(tmp_path / "tok.json")


def _truncated_tokenizer(tmp_path):
    p = _saved_tokenizer(tmp_path)
    p.write_text(p.read_text()[:40])
    return p


def _tokenizer_without(tmp_path, key):
    p = _saved_tokenizer(tmp_path)
    d = json.loads(p.read_text())
    del d[key]
    p.write_text(json.dumps(d))
    return p


CASES: list = [
    # ---------------------------------------------------------------- tokenizer
    ("tokenizer.BPETokenizer", lambda t: BPETokenizer({(1, 2): 300}), ValueError, "merge"),
    ("tokenizer.BPETokenizer", lambda t: BPETokenizer({}, pattern=r"(\w+)"), ValueError, "pattern"),
    ("tokenizer.BPETokenizer", lambda t: BPETokenizer({}, pattern="("), ValueError, "pattern"),
    ("tokenizer.BPETokenizer", lambda t: BPETokenizer({}, special_tokens={"": 256}), ValueError, "special"),
    ("tokenizer.BPETokenizer.train",
     lambda t: BPETokenizer.train("abc abc", 300, special_tokens="<|endoftext|>"), TypeError, "special_tokens"),
    ("tokenizer.BPETokenizer.train", lambda t: BPETokenizer.train("abc abc", 300, special_tokens=("",)),
     ValueError, "special_tokens"),
    ("tokenizer.BPETokenizer.train", lambda t: BPETokenizer.train("abc", 100), ValueError, "vocab_size"),
    ("tokenizer.BPETokenizer.train", lambda t: BPETokenizer.train("abc", 300.0), TypeError, "vocab_size"),
    ("tokenizer.BPETokenizer.train", lambda t: BPETokenizer.train(b"abc", 300), TypeError, "text"),
    ("tokenizer.BPETokenizer.train", lambda t: BPETokenizer.train("a,b", 300, pattern=r"\w"), ValueError,
     "pattern"),
    ("tokenizer.BPETokenizer.encode", lambda t: _tok().encode(None), TypeError, "text"),
    ("tokenizer.BPETokenizer.encode", lambda t: _tok().encode("x", allowed_special="yes"), ValueError, "all"),
    ("tokenizer.BPETokenizer.encode",
     lambda t: BPETokenizer({}, pattern=r"\w+").encode("hi there"), ValueError, "pattern"),
    ("tokenizer.BPETokenizer.encode_ordinary", lambda t: _tok().encode_ordinary(42), TypeError, "text"),
    ("tokenizer.BPETokenizer.decode", lambda t: _tok().decode([104.9]), TypeError, "ids"),
    ("tokenizer.BPETokenizer.decode", lambda t: _tok().decode([10_000]), ValueError, "vocabulary"),
    ("tokenizer.BPETokenizer.decode", lambda t: _tok().decode("hi"), TypeError, "ids"),
    ("tokenizer.BPETokenizer.decode_bytes", lambda t: _tok().decode_bytes([-1]), ValueError, "vocabulary"),
    ("tokenizer.BPETokenizer.decode_bytes", lambda t: _tok().decode_bytes([True]), TypeError, "ids"),
    ("tokenizer.BPETokenizer.load", lambda t: BPETokenizer.load(_truncated_tokenizer(t)), ValueError,
     "not a saved BPETokenizer"),
    ("tokenizer.BPETokenizer.load", lambda t: BPETokenizer.load(_tokenizer_without(t, "merges")), ValueError,
     "merges"),
    ("tokenizer.BPETokenizer.load", lambda t: BPETokenizer.load(_file(t, "x.json", "[1, 2]")), ValueError,
     "not a saved BPETokenizer"),
    ("tokenizer.BPETokenizer.save", lambda t: _tok().save(t / "missing-dir" / "tok.json"), FileNotFoundError,
     "missing-dir"),
    ("tokenizer.load_gpt2_ranks", lambda t: tokenizer.load_gpt2_ranks(_file(t, "r.tiktoken", "x 1")),
     ValueError, "SHA-256"),
    ("tokenizer.recover_merges", lambda t: tokenizer.recover_merges({b"a": 0, b"abc": 1}), ValueError,
     "merge of two"),
    ("tokenizer.pretokenize", lambda t: tokenizer.pretokenize("a,b", r"\w"), ValueError, "pattern"),
    ("tokenizer.pretokenize", lambda t: tokenizer.pretokenize(None), TypeError, "text"),
    ("tokenizer.get_stats", lambda t: tokenizer.get_stats("abc"), TypeError, "ids"),
    ("tokenizer.merge", lambda t: tokenizer.merge([1, 2], (1,), 256), ValueError, "pair"),
    ("tokenizer.best_pair", lambda t: tokenizer.best_pair({}), ValueError, "stats"),
    ("tokenizer.encode_chunk", lambda t: tokenizer.encode_chunk("ab", {}), TypeError, "ids"),
    ("tokenizer.naive_merges", lambda t: tokenizer.naive_merges([[1, 2]], -1), ValueError, "n_merges"),
    ("tokenizer.incremental_merges", lambda t: tokenizer.incremental_merges({b"ab": 1}, 1.5), TypeError,
     "n_merges"),

    # ---------------------------------------------------------------- data
    ("data.load_shakespeare", lambda t: data.load_shakespeare("test"), ValueError, "split"),
    ("data.markdown_to_text", lambda t: data.markdown_to_text(None), TypeError, "markdown"),
    ("data.num_windows", lambda t: data.num_windows(100, 0, 1), ValueError, "context_length"),
    ("data.num_windows", lambda t: data.num_windows(-5, 4, 1), ValueError, "n_tokens"),
    ("data.num_windows", lambda t: data.num_windows(10.5, 4, 1), ValueError, "n_tokens"),
    ("data.GPTDataset", lambda t: data.GPTDataset([1, 2, 3], 4, 1), ValueError, "shorter"),
    ("data.GPTDataset", lambda t: data.GPTDataset([1.5, 2.0, 3.0, 4.0], 2, 1), ValueError, "token_ids"),
    ("data.GPTDataset", lambda t: data.GPTDataset(np.array([2**63, 1, 2, 3], dtype=np.uint64), 2, 1),
     ValueError, "token"),
    ("data.create_dataloader", lambda t: data.create_dataloader(list(range(100)), 0, 4, 4), ValueError,
     "batch_size"),
    ("data.write_token_file", lambda t: data.write_token_file(t / "a.npy", [1.5, 2.7]), ValueError,
     "token_ids"),
    ("data.write_token_file", lambda t: data.write_token_file(t / "a.npy", np.array([1.0, 2.0])),
     ValueError, "token_ids"),
    ("data.write_token_file", lambda t: data.write_token_file(t / "a.npy", [1, -2]), ValueError, ">= 0"),
    ("data.write_token_file", lambda t: data.write_token_file(t / "a.npy", [1, 5], vocab_size=4), ValueError,
     "vocab_size"),
    ("data.write_token_file", lambda t: data.write_token_file(t / "a.npy", [1, 2], vocab_size=0), ValueError,
     "vocab_size"),
    ("data.write_token_file",
     lambda t: data.write_token_file(t / "a.npy", np.array([2**64 - 1], dtype=np.uint64)), ValueError, "2\\*\\*32"),
    ("data.write_token_file", lambda t: data.write_token_file(_file(t, "f", "") / "a.npy", [1]), ValueError,
     "not a directory"),
    ("data.open_token_file", lambda t: data.open_token_file(t / "none.npy"), FileNotFoundError, "none.npy"),
    ("data.open_token_file", lambda t: data.open_token_file(_file(t, "x.npy", "junk")), ValueError,
     "token file"),
    ("data.sample_windows", lambda t: data.sample_windows(np.array([-1, -2, -3, -4, -5]), 2, 2), ValueError,
     "tokens"),
    ("data.sample_windows", lambda t: data.sample_windows(np.array([1.0, 2.0, 3.0, 4.0]), 2, 2), ValueError,
     "tokens"),
    ("data.sample_windows", lambda t: data.sample_windows(np.full(8, 2**63, dtype=np.uint64), 2, 2),
     ValueError, "tokens"),
    ("data.sample_windows", lambda t: data.sample_windows(np.arange(10), 2, 2, start=-1), ValueError, "start"),
    ("data.sample_windows", lambda t: data.sample_windows(np.arange(10), 0, 2), ValueError, "batch_size"),
    # ---------------------------------------------------------------- attention
    ("attention.MultiHeadAttention", lambda t: _mha(d_out=-8), ValueError, "d_out"),
    ("attention.MultiHeadAttention", lambda t: _mha(d_out=9), ValueError, "d_out"),
    ("attention.MultiHeadAttention", lambda t: _mha(d_in=0), ValueError, "d_in"),
    ("attention.MultiHeadAttention", lambda t: _mha(n_heads=0), ValueError, "n_heads"),
    ("attention.MultiHeadAttention", lambda t: _mha(context_length=0), ValueError, "context_length"),
    ("attention.MultiHeadAttention", lambda t: _mha(dropout=1.5), ValueError, "dropout"),
    ("attention.MultiHeadAttention", lambda t: _mha(dropout="0.1"), ValueError, "dropout"),
    ("attention.MultiHeadAttention.forward",
     lambda t: _mha()(torch.randn(1, 4, 8), attn_mask=torch.ones(1, 1, 4, 4)), TypeError, "attn_mask"),
    ("attention.MultiHeadAttention.forward", lambda t: _mha()(torch.randn(4, 8)), ValueError, "x"),
    ("attention.MultiHeadAttention.forward", lambda t: _mha()(torch.randn(1, 4, 7)), ValueError, "d_in"),
    ("attention.MultiHeadAttention.forward", lambda t: _mha()(torch.randn(1, 9, 8)), ValueError,
     "context_length"),
    ("attention.MultiHeadAttention.forward",
     lambda t: _mha()(torch.randn(1, 4, 8), attn_mask=torch.tensor([[0.0, -math.inf, 0.0, 0.0]])), ValueError,
     "attn_mask"),
    ("attention.KVCache", lambda t: KVCache(0, 8), ValueError, "n_layers"),
    ("attention.KVCache", lambda t: KVCache(2, 0), ValueError, "max_len"),
    ("attention.KVCache.update", lambda t: KVCache(1, 4).update(0, torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4)),
     ValueError, "overflow"),
    ("attention.KVCache.update", lambda t: KVCache(1, 4).update(1, torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4)),
     ValueError, "layer"),
    ("attention.KVCache.update", lambda t: KVCache(1, 4).update(0, torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 3, 4)),
     ValueError, "v_new"),
    ("attention.build_attention_mask", lambda t: attention.build_attention_mask(4, 3), ValueError, "T_k"),
    ("attention.build_attention_mask", lambda t: attention.build_attention_mask(0, 3), ValueError, "T"),
    ("attention.build_attention_mask", lambda t: attention.build_attention_mask(2, 3, torch.ones(1, 2)),
     ValueError, "attn_mask"),
    # ---------------------------------------------------------------- model
    ("model.GPTConfig", lambda t: GPTConfig(d_model=10, n_heads=3), ValueError, "divisible"),
    ("model.GPTConfig", lambda t: GPTConfig(vocab_size=0), ValueError, "vocab_size"),
    ("model.GPTConfig", lambda t: GPTConfig(dropout=1.0), ValueError, "dropout"),
    ("model.GPTConfig.from_preset", lambda t: GPTConfig.from_preset("gpt3"), ValueError, "preset"),
    ("model.GPTModel", lambda t: GPTModel(dict(SMALL)), TypeError, "cfg"),
    ("model.GPTModel.forward", lambda t: _model()(torch.tensor([[1, 2]], dtype=torch.uint8)), ValueError,
     "idx"),
    ("model.GPTModel.forward", lambda t: _model()(torch.tensor([[1, 300]])), ValueError, "vocab_size"),
    ("model.GPTModel.forward", lambda t: _model()(torch.tensor([[1, -1]])), ValueError, "vocab_size"),
    ("model.GPTModel.forward", lambda t: _model()(torch.tensor([[1.0, 2.0]])), ValueError, "idx"),
    ("model.GPTModel.hidden_states", lambda t: _model().hidden_states(torch.tensor([1, 2])), ValueError, "idx"),
    ("model.GPTModel.hidden_states", lambda t: _model().hidden_states(torch.zeros(1, 17, dtype=torch.long)),
     ValueError, "context_length"),
    ("model.GPTModel.num_parameters", lambda t: _model().num_parameters(non_embedding="yes"), TypeError,
     "non_embedding"),
    ("model.GPTModel.flops_per_token", lambda t: _model().flops_per_token(-1), ValueError, "seq_len"),
    ("model.GPTModel.flops_per_token", lambda t: _model().flops_per_token(17), ValueError, "seq_len"),
    ("model.GPTModel.flops_per_token", lambda t: _model().flops_per_token(4.5), ValueError, "seq_len"),
    ("model.LayerNorm", lambda t: model.LayerNorm(0), ValueError, "d_model"),
    ("model.LayerNorm", lambda t: model.LayerNorm(8, eps=-1.0), ValueError, "eps"),
    ("model.LayerNorm.forward", lambda t: model.LayerNorm(8)(torch.randn(2, 7)), ValueError, "d_model"),
    ("model.GELU.forward", lambda t: model.GELU()([1.0, 2.0]), TypeError, "x"),
    ("model.FeedForward", lambda t: model.FeedForward(0), ValueError, "d_model"),
    ("model.FeedForward.forward", lambda t: model.FeedForward(8)(torch.randn(2, 7)), ValueError, "d_model"),
    ("model.TransformerBlock", lambda t: model.TransformerBlock(dict(SMALL)), TypeError, "cfg"),
    ("model.TransformerBlock.forward",
     lambda t: model.TransformerBlock(GPTConfig(**SMALL))(torch.randn(1, 4, 15)), ValueError, "d_model"),
    # ---------------------------------------------------------------- weights
    ("weights.load_gpt2", lambda t: weights.load_gpt2(str(t / "no-such-gpt2")), FileNotFoundError, "no-such-gpt2"),
    ("weights.load_gpt2", lambda t: weights.load_gpt2(_file(t, "config.json", "{}")), ValueError, "is a file"),
    ("weights.load_gpt2", lambda t: weights.load_gpt2(t), FileNotFoundError, "config.json"),
    ("weights.load_gpt2", lambda t: weights.load_gpt2(42), TypeError, "source"),
    ("weights.save_hf", lambda t: weights.save_hf(torch.nn.Linear(2, 2), t / "out"), TypeError, "model"),
    ("weights.hf_name_map", lambda t: weights.hf_name_map(-1), ValueError, "n_layers"),
    ("weights.config_from_hf", lambda t: weights.config_from_hf({"model_type": "llama"}), ValueError, "model_type"),
    ("weights.config_from_hf", lambda t: weights.config_from_hf({"n_embd": 8}), ValueError, "lacks"),
    ("weights.config_from_hf", lambda t: weights.config_from_hf("gpt2"), TypeError, "hf"),
    ("weights.config_to_hf", lambda t: weights.config_to_hf(dict(SMALL)), TypeError, "cfg"),
    ("weights.hub_available", lambda t: weights.hub_available(timeout=-1), ValueError, "timeout"),
    # ---------------------------------------------------------------- generate
    ("generate.generate", lambda t: generate.generate(_model(), torch.tensor([1, 2]), 3), ValueError, "idx"),
    ("generate.generate", lambda t: generate.generate(_model(), torch.tensor([[1, 2]]), -1), ValueError,
     "max_new_tokens"),
    ("generate.generate", lambda t: generate.generate(_model(), torch.tensor([[1, 2]]), 2, temperature=-1),
     ValueError, "temperature"),
    ("generate.generate", lambda t: generate.generate(_model(), torch.tensor([[1, 999]]), 2), ValueError,
     "vocab_size"),
    ("generate.generate", lambda t: generate.generate(_model(), torch.tensor([[1, 2]]), 2, eos_id=1.5),
     ValueError, "eos_id"),
    ("generate.generate_tokens", lambda t: next(generate.generate_tokens(_model(), [[1, 2]], 2)), ValueError, "idx"),
    ("generate.generate_text", lambda t: generate.generate_text(_model(), _tok(), "low", stop=""), ValueError, "stop"),
    ("generate.generate_text", lambda t: generate.generate_text(_model(), _tok(), 42), TypeError, "prompt"),
    ("generate.stream", lambda t: list(generate.stream(_model(), _tok(), "low", top_k=0)), ValueError, "top_k"),
    ("generate.apply_temperature", lambda t: generate.apply_temperature(torch.zeros(1, 3), 0), ValueError,
     "temperature"),
    ("generate.top_k_filter", lambda t: generate.top_k_filter(torch.zeros(1, 3), 0), ValueError, "top_k"),
    ("generate.top_p_filter", lambda t: generate.top_p_filter(torch.zeros(1, 3), 1.5), ValueError, "top_p"),
    ("generate.sample_next", lambda t: generate.sample_next(torch.full((2, 4), -math.inf)), ValueError, "logits"),
    ("generate.sample_next", lambda t: generate.sample_next(torch.full((2, 4), -math.inf), temperature=0),
     ValueError, "logits"),
    ("generate.sample_next", lambda t: generate.sample_next(torch.tensor([[0.0, math.nan]])), ValueError, "logits"),
    ("generate.sample_next", lambda t: generate.sample_next(torch.zeros(4)), ValueError, "logits"),
    ("generate.left_pad", lambda t: generate.left_pad([[1, 2], []]), ValueError, "prompt"),
    ("generate.left_pad", lambda t: generate.left_pad([[1, 2.5]]), TypeError, "prompts"),
    ("generate.left_pad", lambda t: generate.left_pad([[1, 2]], pad_id=-1), ValueError, "pad_id"),
    ("generate.find_eos_id", lambda t: generate.find_eos_id(None), TypeError, "tokenizer"),
    # ---------------------------------------------------------------- checkpoint
    ("checkpoint.save_checkpoint", lambda t: checkpoint.save_checkpoint(t / "c.pt", model=_model(), step=-1),
     ValueError, "step"),
    ("checkpoint.save_checkpoint", lambda t: checkpoint.save_checkpoint(t / "c.pt", model="gpt"), TypeError, "model"),
    ("checkpoint.load_checkpoint", lambda t: checkpoint.load_checkpoint(_file(t, "c.pt", "junk")), ValueError,
     "not a valid checkpoint"),
    ("checkpoint.load_checkpoint", lambda t: checkpoint.load_checkpoint(t / "none.pt"), FileNotFoundError, "none.pt"),
    ("checkpoint.load_model", lambda t: checkpoint.load_model(_file(t, "c.pt", "junk")), ValueError,
     "not a valid checkpoint"),
    ("checkpoint.payload_checksum", lambda t: checkpoint.payload_checksum([1, 2]), TypeError, "state"),
    ("checkpoint.set_rng_state", lambda t: checkpoint.set_rng_state({"python": 1}), ValueError, "state"),
    # ---------------------------------------------------------------- train
    ("train.cross_entropy_loss", lambda t: train.cross_entropy_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3)),
     ValueError, "targets"),
    ("train.cross_entropy_loss",
     lambda t: train.cross_entropy_loss(torch.zeros(1, 2, 3), torch.tensor([[0, 3]])), ValueError, "targets"),
    ("train.cross_entropy_loss",
     lambda t: train.cross_entropy_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2)), TypeError, "targets"),
    ("train.perplexity", lambda t: train.perplexity("2.0"), TypeError, "loss"),
    ("train.perplexity", lambda t: train.perplexity(-1.0), ValueError, "loss"),
    ("train.bits_per_byte", lambda t: train.bits_per_byte(1.0, 0, 10), ValueError, "n_tokens"),
    ("train.lr_at", lambda t: train.lr_at(-1, max_lr=1e-3, warmup_steps=1, max_steps=10), ValueError, "step"),
    ("train.lr_at", lambda t: train.lr_at(1, max_lr=-1e-3, warmup_steps=1, max_steps=10), ValueError, "max_lr"),
    ("train.configure_optimizer", lambda t: train.configure_optimizer(_model(), lr=-1.0), ValueError, "lr"),
    ("train.configure_optimizer", lambda t: train.configure_optimizer(_model(), 1e-3, weight_decay=-0.1),
     ValueError, "weight_decay"),
    ("train.check_finite", lambda t: train.check_finite(torch.tensor(math.nan), 3), FloatingPointError, "step 3"),
    ("train.check_finite", lambda t: train.check_finite("1.0", 3), TypeError, "loss"),
    ("train.estimate_loss", lambda t: train.estimate_loss(_model(), lambda: None, 0), ValueError, "eval_iters"),
    ("train.autocast_context", lambda t: train.autocast_context("tpu9"), ValueError, "device"),
    ("train.make_grad_scaler", lambda t: train.make_grad_scaler(3.5), TypeError, "device"),
    ("train.TrainConfig", lambda t: train.TrainConfig(max_steps=0), ValueError, "max_steps"),
    ("train.TrainConfig", lambda t: train.TrainConfig(max_lr=0.0), ValueError, "max_lr"),
    ("train.TrainConfig", lambda t: train.TrainConfig(eval_interval=-1), ValueError, "eval_interval"),
    ("train.TrainConfig.lr", lambda t: train.TrainConfig(max_steps=10, warmup_steps=1).lr(-1), ValueError, "step"),
    ("train.train_step", lambda t: train.train_step(_model(), None, lambda: None, 0, train.TrainConfig()),
     TypeError, "optimizer"),
    ("train.train", lambda t: train.train(_model(), None, lambda: None, train.TrainConfig()), TypeError,
     "optimizer"),
    # ---------------------------------------------------------------- hardware
    ("hardware.peak_flops", lambda t: hardware.peak_flops("cpu", dtype="bf16"), TypeError, "dtype"),
    ("hardware.mfu", lambda t: hardware.mfu(-1.0, 1e9, 1e12), ValueError, "tokens_per_s"),
    ("hardware.mfu", lambda t: hardware.mfu(1.0, 0.0, 1e12), ValueError, "flops_per_token"),
    ("hardware.device_name", lambda t: hardware.device_name("tpu9"), ValueError, "device"),
    ("hardware.amp_dtype", lambda t: hardware.amp_dtype("tpu9"), ValueError, "device"),
    ("train.shuffled_batches", lambda t: train.shuffled_batches(0, 4, random.Random(0)), ValueError, "n >= 1"),
    ("train.shuffled_batches", lambda t: train.shuffled_batches(5, 0, random.Random(0)), ValueError, "batch_size >= 1"),
    ("train.optimizer_step", lambda t: train.optimizer_step(torch.ones(3, requires_grad=True), None, []),
     ValueError, "loss must be a scalar"),
    ("train.optimizer_step", lambda t: train.optimizer_step(torch.ones((), requires_grad=True), None, [], max_norm=0),
     ValueError, "max_norm"),
    ("hardware.has_native_bf16", lambda t: hardware.has_native_bf16(42), ValueError, "device"),
    # ---------------------------------------------------------------- finetune
    ("finetune.starting_model", lambda t: finetune.starting_model(use_gpt2="yes"), TypeError, "use_gpt2"),
    ("finetune.play_label", lambda t: finetune.play_label(data.Play("x", "X", "poems", "")), ValueError, "genre"),
    ("finetune.genre_split", lambda t: finetune.genre_split(test_fraction=1.5), ValueError, "test_fraction"),
    ("finetune.cut_passages", lambda t: finetune.cut_passages("no speeches here", 2), ValueError, "speeches"),
    ("finetune.cut_passages", lambda t: finetune.cut_passages("A:\nhi\n", 0), ValueError, "n_passages"),
    ("finetune.Passage", lambda t: finetune.Passage((1, 2), -1, "x", "t"), ValueError, "label"),
    ("finetune.make_genre_dataset", lambda t: finetune.make_genre_dataset(list, (), 0), ValueError,
     "passages_per_class"),
    ("finetune.pad_batch", lambda t: finetune.pad_batch([], 0), ValueError, "non-empty"),
    ("finetune.GPTClassifier", lambda t: finetune.GPTClassifier(_model(), 1), ValueError, "n_classes"),
    ("finetune.GPTClassifier", lambda t: finetune.GPTClassifier(_model(), 2, pool="max"), ValueError, "pool"),
    ("finetune.GPTClassifier.forward", lambda t: finetune.GPTClassifier(_model(), 2)(torch.tensor([1, 2])),
     ValueError, "idx"),
    ("finetune.set_trainable", lambda t: finetune.set_trainable(finetune.GPTClassifier(_model(), 2), "some"),
     ValueError, "strategy"),
    ("finetune.train_classifier", lambda t: finetune.train_classifier(finetune.GPTClassifier(_model(), 2), [],
                                                                      steps=1), ValueError, "data"),
    ("finetune.evaluate_classifier", lambda t: finetune.evaluate_classifier(finetune.GPTClassifier(_model(), 2), []),
     ValueError, "empty"),
    ("finetune.confusion_matrix", lambda t: finetune.confusion_matrix([0, 1], [0], 2), ValueError, "y_pred"),
    ("finetune.confusion_matrix", lambda t: finetune.confusion_matrix([0, 5], [0, 1], 2), ValueError, "n_classes"),
    ("finetune.NaiveBayesClassifier", lambda t: finetune.NaiveBayesClassifier(alpha=0), ValueError, "alpha"),
    ("finetune.NaiveBayesClassifier.fit", lambda t: finetune.NaiveBayesClassifier().fit(["a b"], [0, 1]),
     ValueError, "labels"),
    ("finetune.NaiveBayesClassifier.predict", lambda t: finetune.NaiveBayesClassifier().predict(["a b"]),
     ValueError, "fit"),
    ("finetune.NaiveBayesClassifier.log_posterior",
     lambda t: finetune.NaiveBayesClassifier().log_posterior(["a b"]), ValueError, "fit"),
    ("finetune.bag_of_words", lambda t: finetune.bag_of_words(None), TypeError, "text"),
    ("finetune.strip_speaker_lines", lambda t: finetune.strip_speaker_lines(None), TypeError, "text"),
    ("finetune.heldout_play_split", lambda t: finetune.heldout_play_split(val_per_label=0), ValueError,
     "val_per_label"),
    ("finetune.lm_bits_per_byte", lambda t: finetune.lm_bits_per_byte(_model(), _tok(), "low " * 50, max_windows=0),
     ValueError, "max_windows"),
    ("finetune.majority_class", lambda t: finetune.majority_class([]), ValueError, "at least one label"),
    ("finetune.predict_classifier", lambda t: finetune.predict_classifier(finetune.GPTClassifier(_model(), 2), []),
     ValueError, "empty"),
    # ---------------------------------------------------------------- instruct
    ("instruct.format_few_shot", lambda t: instruct.format_few_shot({"input": "x"}, []), ValueError, "instruction"),
    ("instruct.few_shot_exact_match", lambda t: instruct.few_shot_exact_match(_model(), _tok(), [], []),
     ValueError, "record"),
    ("instruct.few_shot_exact_match",
     lambda t: instruct.few_shot_exact_match(_model(), _tok(), [{"instruction": "x", "output": "y"}], [], k=-1),
     ValueError, "k must"),
    pytest.param("instruct.format_prompt", lambda t: instruct.format_prompt({"input": "x"}), ValueError,
                 "instruction"),
    ("instruct.load_alpaca_json", lambda t: instruct.load_alpaca_json(_file(t, "a.json", "{")), ValueError,
     "not valid JSON"),
    ("instruct.generate_instruction_data", lambda t: instruct.generate_instruction_data(0), ValueError, "n must"),
    ("instruct.generate_instruction_data", lambda t: instruct.generate_instruction_data(2, tasks=("x",)),
     ValueError, "task"),
    ("instruct.split_instruction_data", lambda t: instruct.split_instruction_data([], 2.0), ValueError,
     "held_out_fraction"),
    ("instruct.encode_example", lambda t: instruct.encode_example(_tok(), {"output": "x"}), ValueError,
     "instruction"),
    ("instruct.instruction_collate", lambda t: instruct.instruction_collate([], 0), ValueError, "empty batch"),
    ("instruct.eos_token_id", lambda t: instruct.eos_token_id(_tok_without_eos()), ValueError, "<\\|endoftext"),
    ("instruct.greedy_generate", lambda t: instruct.greedy_generate(_model(), [], 3), ValueError, "ids"),
    ("instruct.greedy_generate", lambda t: instruct.greedy_generate(_model(), [1, 2], -3), ValueError,
     "max_new_tokens"),
    ("instruct.answer", lambda t: instruct.answer(_model(), _tok(), {"input": "x"}), ValueError, "instruction"),
    ("instruct.exact_match", lambda t: instruct.exact_match(_model(), _tok(), []), ValueError, "record"),
    ("instruct.train_instructions", lambda t: instruct.train_instructions(_model(), [], steps=1), ValueError,
     "examples"),
    # ---------------------------------------------------------------- chat
    ("chat.add_chat_tokens", lambda t: chat.add_chat_tokens("gpt2"), TypeError, "BPETokenizer"),
    ("chat.resize_token_embeddings", lambda t: chat.resize_token_embeddings(_model(), 3), ValueError, "vocab_size"),
    ("chat.render_chat", lambda t: chat.render_chat([{"role": "bot", "content": "x"}]), ValueError, "role"),
    ("chat.encode_chat", lambda t: chat.encode_chat(_tok(), [{"role": "user", "content": "x"}]), ValueError,
     "add_chat_tokens"),
    ("chat.chat_collate", lambda t: chat.chat_collate([([1, 2], [1])], 0), ValueError, "labels"),
    ("chat.make_conversations", lambda t: chat.make_conversations(0), ValueError, "n must"),
    ("chat.show_loss_mask", lambda t: chat.show_loss_mask(_tok(), [1, 2], [1]), ValueError, "labels"),
    ("chat.chat_generate", lambda t: chat.chat_generate(_model(), chat.add_chat_tokens(_tok()), []), ValueError,
     "messages_batch"),
    ("chat.chat_exact_match", lambda t: chat.chat_exact_match(_model(), chat.add_chat_tokens(_tok()), []), ValueError,
     "conversations"),
    # ---------------------------------------------------------------- grpo
    ("grpo.group_advantages", lambda t: grpo.group_advantages(torch.ones(4)), ValueError, "rewards"),
    ("grpo.token_logprobs", lambda t: grpo.token_logprobs(_model(), torch.zeros(2, 3)), TypeError, "ids"),
    ("grpo.grpo_loss", lambda t: grpo.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                                                torch.zeros(2), torch.ones(2, 3), clip_eps=0.0), ValueError, "clip_eps"),
    ("grpo.train_grpo", lambda t: grpo.train_grpo(_model(), _model(), _tok(), [], lambda r, x: 0.0, steps=1),
     ValueError, "records"),
    # ---------------------------------------------------------------- lora
    ("lora.LoRALinear", lambda t: lora.LoRALinear(torch.nn.Linear(4, 4), 0, 1.0), ValueError, "rank"),
    ("lora.LoRALinear", lambda t: lora.LoRALinear(torch.nn.Conv1d(4, 4, 1), 1, 1.0), ValueError, "nn.Linear"),
    pytest.param("lora.LoRALinear.forward",
                 lambda t: lora.LoRALinear(torch.nn.Linear(4, 4), 1, 1.0)(torch.zeros(2, 3)), ValueError,
                 "in_features"),
    ("lora.apply_lora", lambda t: lora.apply_lora(_model(), 2, 4.0, target_modules=("nope",)), ValueError,
     "target_modules"),
    ("lora.apply_lora", lambda t: lora.apply_lora(_model(), 2, 4.0, target_modules="attn.qkv"), ValueError,
     "target_modules"),
    pytest.param("lora.merge_lora", lambda t: lora.merge_lora("model"), TypeError, "model"),
    ("lora.lora_state_dict", lambda t: lora.lora_state_dict(_model()), ValueError, "LoRA"),
    ("lora.load_lora_state_dict", lambda t: lora.load_lora_state_dict(_model(), {}), ValueError, "LoRA"),
    ("lora.count_trainable", lambda t: lora.count_trainable("model"), TypeError, "model"),
    # ---------------------------------------------------------------- runtime
    ("runtime.pick", lambda t: runtime.pick(smoke=1), TypeError, "cpu"),
    ("runtime.set_seed", lambda t: runtime.set_seed(-1), ValueError, "seed"),
    ("runtime.set_seed", lambda t: runtime.set_seed(1.5), TypeError, "seed"),
    ("runtime.get_profile", lambda t: _with_env("LLM_PROFILE", "fast", runtime.get_profile), ValueError,
     "LLM_PROFILE"),
    ("runtime.get_device", lambda t: _with_env("LLM_DEVICE", "gpu0", runtime.get_device), ValueError,
     "LLM_DEVICE"),
    ("runtime.is_smoke", lambda t: _with_env("LLM_PROFILE", "fast", runtime.is_smoke), ValueError, "LLM_PROFILE"),
]

#: Public functions without a bad-input case, and why.
EXEMPT = {
    "tokenizer.gpt2_encoding": "takes no argument",
    "tokenizer.BPETokenizer.from_gpt2": "takes no argument",
    "data.shakespeare_plays": "takes no argument",
    "data.Play": "a frozen record of four strings, built only by shakespeare_plays",
    "attention.KVCache.bytes": "takes no argument",
    "model.GPTConfig.to_dict": "takes no argument",
    "model.GPTModel.new_kv_cache": "takes no argument",
    "model.GELU": "takes no argument",
    "checkpoint.rng_state": "takes no argument",
    "lora.LoRALinear.delta_weight": "takes no argument",
    "lora.LoRALinear.merged": "takes no argument",
    "lora.LoRALinear.extra_repr": "takes no argument",
}


def _tok_without_eos():
    return BPETokenizer.train("low lower lowest " * 20, vocab_size=262, special_tokens=())


def _with_env(name, value, fn):
    import os
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _target(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def _public_api() -> set[str]:
    """``module.name`` for every public function and class defined in a module of :data:`MODULES`
    (not those it re-exports), and ``module.Class.method`` for every public method a class
    defines itself."""
    names = set()
    for m in MODULES:
        mod = importlib.import_module(f"shared.{m}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue  # error types are raised, not called
            if getattr(obj, "__module__", None) != mod.__name__:
                continue  # re-exported from another module (e.g. shared.data from shared.packing): tested there
            if inspect.isclass(obj):
                names.add(f"{m}.{name}")
                for attr, value in vars(obj).items():
                    if not attr.startswith("_") and (inspect.isfunction(value)
                                                     or isinstance(value, (classmethod, staticmethod))):
                        names.add(f"{m}.{name}.{attr}")
            elif callable(obj):  # functions, also those wrapped by functools.lru_cache
                names.add(f"{m}.{name}")
    return names


def test_every_public_function_has_a_bad_input_case():
    covered = {_target(c) for c in CASES}
    missing = sorted(_public_api() - covered - set(EXEMPT))
    assert not missing, f"public functions without a bad-input case in tests/test_bad_input.py: {missing}"
    stale = sorted((covered | set(EXEMPT)) - _public_api())
    assert not stale, f"cases or exemptions for names that are not public (renamed?): {stale}"


@pytest.mark.parametrize("target, call, exc, match", CASES,
                         ids=[f"{_target(c)}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_raises_a_clear_error(tmp_path, target, call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call(tmp_path)
    # A clear error is ours, not one re-raised from deep inside a library.
    assert type(info.value).__module__.split(".")[0] in ("builtins", "shared"), type(info.value)
