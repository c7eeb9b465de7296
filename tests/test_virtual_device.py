"""Device placement without a GPU: shared.course.virtual_device finds what CUDA would reject, and
the course's own loops (training, generation, post-training) pass it."""

from __future__ import annotations

import copy
import random

import nbformat
import pytest
import torch

from shared.course.virtual_device import VirtualDevice, check_notebook
from shared.model import GPTConfig, GPTModel


def _gpt(V=64, T=32, seed=0):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=V, context_length=T, d_model=32, n_heads=2, n_layers=1))


def test_it_flags_cpu_inputs_to_an_accelerator_model_and_numpy_of_its_outputs():
    with VirtualDevice() as vd:
        model = _gpt().to(vd.device)
        model(torch.randint(0, 64, (2, 8)))                             # ids left on the CPU
        assert any("embedding() mixes" in p for p in vd.problems), vd.problems
        n = len(vd.problems)
        out = model(torch.randint(0, 64, (2, 8), device=vd.device))
        assert len(vd.problems) == n, vd.problems[n:]                    # placed ids: fine
        assert out.device == vd.device and next(model.parameters()).device == vd.device
        out.detach().numpy()
        assert ".numpy() of an accelerator tensor" in vd.problems[-1]
        out.detach().cpu().numpy()                                      # the right way: no new problem
        assert ".numpy()" not in " ".join(vd.problems[n + 1:])


def test_patches_are_undone_on_exit():
    to, new = torch.nn.Module.to, torch.nn.Parameter.__new__
    with VirtualDevice():
        assert torch.nn.Module.to is not to
    assert torch.nn.Module.to is to and torch.nn.Parameter.__new__ is new
    assert "device" not in torch.nn.Parameter.__dict__


def test_the_course_loops_keep_everything_on_the_device():
    from shared.dpo import train_dpo
    from shared.finetune import GPTClassifier, Passage, evaluate_classifier, set_trainable, train_classifier
    from shared.generate import generate
    from shared.grpo import train_grpo
    from shared.instruct import train_instructions
    from shared.lora import apply_lora, merge_lora
    from shared.speculative import speculative_generate
    from shared.tokenizer import BPETokenizer
    from shared.train import TrainConfig, configure_optimizer, train

    with VirtualDevice() as vd:
        dev = vd.device
        model = _gpt().to(dev)
        prompt = torch.randint(0, 64, (1, 4), device=dev)
        generate(model, prompt, 6, use_cache=True)
        generate(model, prompt, 6, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(0))
        speculative_generate(model, _gpt(seed=1).to(dev), prompt, 6, k=2, temperature=1.0,
                             generator=torch.Generator().manual_seed(0))
        cfg = TrainConfig(max_steps=2, max_lr=1e-3, warmup_steps=0, eval_interval=1, eval_iters=1)
        batch = lambda: (torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))  # noqa: E731 (CPU, as loaders give)
        train(model, configure_optimizer(model, 1e-3), batch, cfg, eval_batch=batch)
        ex = [([1, 2, 3], [4, 5, 6]), ([7, 8], [9, 10, 11])] * 3
        train_instructions(apply_lora(copy.deepcopy(model), rank=2, alpha=4), ex, steps=2, batch_size=2, device=dev)
        merge_lora(apply_lora(copy.deepcopy(model), rank=2, alpha=4))
        pairs = [([1, 2, 3], [10, 11], [20, 21]), ([5, 6], [12], [22])]
        train_dpo(copy.deepcopy(model), model, pairs, steps=2, batch_size=2, device=dev)
        data = [Passage(ids=(1 + lab * 10,) * 6, label=lab, slug="x", text="") for lab in range(3)] * 2
        clf = GPTClassifier(copy.deepcopy(model), n_classes=3)
        set_trainable(clf, "head")
        train_classifier(clf, data, steps=2, batch_size=3, device=dev)
        evaluate_classifier(clf, data, device=dev)
        tok = BPETokenizer.train("to be or not to be that is the question " * 20, vocab_size=280)
        policy = _gpt(V=tok.vocab_size).to(dev)
        recs = [{"instruction": "Say a word.", "input": w, "output": w} for w in ("be", "not")]
        coin = random.Random(0)
        train_grpo(copy.deepcopy(policy), policy, tok, recs, lambda r, t: float(coin.random() < 0.5), steps=1,
                   group_size=2, prompts_per_step=2, max_new_tokens=3, device=dev)
    assert vd.problems == [], "\n".join(vd.problems)


def test_the_notebook_check_reports_a_planted_bug(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import torch\nfrom shared.runtime import DEVICE\nfrom shared.model import GPTConfig, GPTModel"),
        nbformat.v4.new_code_cell("m = GPTModel(GPTConfig(vocab_size=10, context_length=8, d_model=8, n_heads=2, n_layers=1)).to(DEVICE)\n"
                                  "m(torch.zeros(1, 4, dtype=torch.long))   # forgot device=DEVICE"),
    ])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    problems, errors = check_notebook(path, timeout=120)
    assert errors == [] and any("embedding() mixes" in p and "forgot device" in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["ch06_generation/06_generation.ipynb", "ch06_generation/06b_fast_inference.ipynb",
                                      "ch07_finetuning/07a_classification.ipynb",
                                      "ch07_finetuning/07b_instructions_lora.ipynb",
                                      "ch07_finetuning/07c_preference_dpo.ipynb",
                                      "ch07_finetuning/07d_distill_adapt.ipynb"])
def test_the_chapters_on_the_course_model_would_run_on_a_gpu(notebook):
    """Chapters 6 and 7 put the course model on DEVICE: every tensor they feed it must follow."""
    from pathlib import Path

    problems, errors = check_notebook(Path(__file__).resolve().parent.parent / notebook)
    assert errors == [] and problems == [], "\n".join(errors + problems)
