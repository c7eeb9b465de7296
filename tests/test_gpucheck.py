"""The GPU check script (`python -m shared.gpucheck`) in its CPU quick mode, so it cannot rot."""

import json
import shutil

import nbformat
import pytest
import torch

from shared import gpucheck


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """The command the README gives, ``python -m shared.gpucheck --device cpu --quick --out ...``."""
    out = tmp_path_factory.mktemp("gpucheck") / "report.json"
    assert gpucheck.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_quick_mode_reports_every_item_without_errors(quick_report):
    r = quick_report
    assert r["errors"] == {}, r["errors"]
    assert set(r["results"]) == set(gpucheck.ITEMS)
    (nb,) = r["results"]["notebooks"]["rows"]  # one notebook, under the smoke profile
    assert nb["status"] == "ok" and r["results"]["notebooks"]["profile"] == "smoke", nb
    t = r["results"]["train_throughput"]
    eager, compiled = t["rows"]
    assert eager["mode"] == "eager" and eager["tokens_per_s"] > 0 and eager["fused_adamw"]
    assert eager["mfu"] is None, "a CPU has no known peak: MFU must be None, not a made-up figure"
    if shutil.which("g++") or shutil.which("cc"):  # torch.compile on the CPU needs a C++ compiler
        assert "error" not in compiled, compiled
        assert compiled["mode"] == "compile" and compiled["tokens_per_s"] > 0
        assert t["compile_loss_diff"] < 1e-4, "compiled and eager steps must compute the same loss"
    for row in r["results"]["kv_cache_decoding"]["rows"]:
        assert row["identical_tokens"], "cached and uncached greedy decoding must give the same tokens"
        assert row["speedup"] > 0
    assert [row["T"] for row in r["results"]["attention"]["rows"]] == [128, 256]
    c = r["results"]["course_recipe"]
    assert c["recipe"] == "smoke" and 0 < c["val_bits_per_byte"] < 10
    assert [row["kjv_weight"] for row in c["rows"]] == [0.3, 0.0], "with and without the KJV"
    assert all(0 < row["val_bits_per_byte"] < 10 for row in c["rows"])
    md = gpucheck.markdown(r)
    assert "--quick: toy sizes" in md and "## 2. KV-cache decoding" in md and "plays + KJV (30% of windows)" in md


def test_the_gpu_recipe_is_chosen_on_cuda_only():
    from shared.pretrained import RECIPES, recipe_name
    from shared.model import GPTConfig, GPTModel

    assert recipe_name("default", "cuda") == "gpu"
    assert recipe_name("default", "cpu") == "default" and recipe_name("smoke", "cuda") == "smoke"
    g = RECIPES["gpu"]
    n = GPTModel(GPTConfig(vocab_size=g["vocab_size"], **g["model"])).num_parameters()
    assert n > 10e6 and g["model"]["context_length"] >= 256 and g["model"]["dropout"] > 0
    assert 0 < g["kjv_weight"] < 1, "the GPU recipe mixes in the second corpus (Chapter 2b's KJV)"
    assert "kjv_weight" not in RECIPES["default"] and "kjv_weight" not in RECIPES["smoke"], \
        "the CPU default and smoke recipes stay as they are"
    with pytest.raises(ValueError, match="unknown profile"):
        recipe_name("huge", "cpu")


def _notebook(path, source):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbformat.write(nb, path)
    return path


def test_notebooks_item_reports_ok_error_and_never_writes(tmp_path):
    good = _notebook(tmp_path / "good.ipynb", "import os\nassert os.environ['LLM_PROFILE'] == 'default'")
    bad = _notebook(tmp_path / "bad.ipynb", "raise RuntimeError('boom')")
    before = good.read_bytes()
    rows = gpucheck.notebooks(torch.device("cpu"), budget_s=120, paths=[good, bad])["rows"]
    assert [r["status"] for r in rows] == ["ok", "error"], rows
    assert "boom" in rows[1]["error"]
    assert good.read_bytes() == before, "the check must not write outputs into the notebooks"
    skipped = gpucheck.notebooks(torch.device("cpu"), budget_s=5, paths=[good])["rows"]
    assert skipped[0]["status"].startswith("skipped")


def test_cli_writes_json_and_markdown_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["--device", "cpu", "--quick", "--items", "attention", "--out", str(out)]
    assert gpucheck.main(args) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and "attention" in report["results"]
    assert (tmp_path / "r.md").read_text().startswith("# GPU check")
    with pytest.raises(SystemExit):
        gpucheck.main(args)
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    (dict(items=("nope",)), "items"),
    (dict(budget_s=0), "budget_s"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpucheck.run_checks("cpu", quick=True, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        gpucheck.run_checks("cuda")


def test_kv_cache_item_reports_where_cached_and_uncached_tokens_part(monkeypatch):
    import shared.generate as gen

    real = gen.generate

    def cached_goes_wrong(model, idx, max_new_tokens, use_cache=True, **kw):
        out = real(model, idx, max_new_tokens, use_cache=use_cache, **kw)
        if use_cache:
            out = out.clone()
            out[-1, idx.shape[1] + 3] = (out[-1, idx.shape[1] + 3] + 1) % model.cfg.vocab_size
        return out

    monkeypatch.setattr(gen, "generate", cached_goes_wrong)
    rows = gpucheck.kv_cache_decoding(torch.device("cpu"), quick=True)["rows"]
    for row in rows:
        assert row["identical_tokens"] is False and row["first_differing_new_token"] == 3, row
        assert row["top2_logit_gap_at_first_difference"] >= 0
    md = gpucheck.markdown({"device": "cpu", "torch": "x", "cuda": None, "python": "3", "started": "now",
                            "total_seconds": 1.0, "quick": True, "errors": {},
                            "results": {"kv_cache_decoding": {"model": "toy", "dtype": "float32", "rows": rows}}})
    assert "no: from new token 3" in md


def test_the_prepared_gpu_call_script_dry_runs_on_the_cpu(tmp_path):
    """`.ci/gpu_run.sh` is the one command a GPU session runs; here without wheels, on the CPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(gpucheck.ROOT)
    env = {**os.environ, "OUT": str(tmp_path), "SKIP_WHEELS": "1", "BUDGET": "60",
           "GPUCHECK_ARGS": "--device cpu --quick --items attention",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(root / ".ci" / "gpu_run.sh")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {"gpu_report.json", "gpu_report.md", "gpucheck.log", "env.txt"} <= {p.name for p in tmp_path.iterdir()}
    assert "attention" in json.loads((tmp_path / "gpu_report.json").read_text())["results"]


def test_the_gpu_recipe_itself_trains_one_step_on_the_cpu():
    """The real `gpu` recipe (26M parameters, context 256, dropout, the KJV mix) end to end, on
    a sliver of the text and one step of one window: its settings fit together and run."""
    from shared.pretrained import RECIPES, train_course_model

    model, tok, info = train_course_model("gpu", device="cpu", verbose=False, max_steps=1, batch_size=1,
                                          warmup_steps=0, eval_interval=0, eval_iters=1,
                                          text_chars=30_000, val_chars=3_000)
    g = RECIPES["gpu"]
    assert model.cfg.context_length == g["model"]["context_length"] and model.cfg.dropout == g["model"]["dropout"]
    assert model.num_parameters() > 25e6 and tok.vocab_size <= g["vocab_size"]
    assert info["recipe"]["kjv_weight"] == g["kjv_weight"] and 0 < info["val_bpb"] < 20
