"""shared.speculative (re-exported by shared.generate): greedy identity and the output distribution.

Statistical tests: Pearson chi-square goodness of fit, fixed seeds, significance level
ALPHA = 0.001; each test also shows that it *can* fail (the draft's own distribution is rejected).
"""

import itertools

import pytest
import torch

from shared.generate import generate, speculative_accept, speculative_generate
from shared.model import GPTConfig, GPTModel

ALPHA = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models run on one thread


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P-value of Pearson's chi-square test of ``counts`` against ``probs`` (cells with p > 0)."""
    n = counts.sum()
    keep = probs > 0
    expected = n * probs[keep]
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = int(keep.sum()) - 1
    assert int(counts[~keep].sum()) == 0, "a token with probability 0 was drawn"
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat.double() / 2))


def tiny(vocab, seed, layers, d_model, scale=30.0):
    torch.manual_seed(seed)
    m = GPTModel(GPTConfig(vocab_size=vocab, context_length=32, d_model=d_model, n_heads=2, n_layers=layers)).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(scale)
    return m


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_target_alone(k):
    target, draft = tiny(40, 0, 2, 32, 10), tiny(40, 1, 1, 16, 10)
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    out, stats = speculative_generate(target, draft, idx, 25, k=k, return_stats=True)
    assert torch.equal(out, generate(target, idx, 25))
    assert stats["drafted"] > 0 and 0 <= stats["acceptance_rate"] <= 1
    assert torch.equal(speculative_generate(target, target, idx, 25, k=k), out)  # self-draft: all accepted


def test_self_draft_accepts_everything_when_sampling():
    m = tiny(40, 0, 2, 32, 10)
    _, stats = speculative_generate(m, m, torch.tensor([[1, 2]]), 20, k=4, temperature=1.0,
                                    generator=torch.Generator().manual_seed(0), return_stats=True)
    assert stats["acceptance_rate"] == 1.0 and stats["tokens_per_round"] > 4


def test_eos_stops():
    target = tiny(40, 0, 2, 32, 10)
    idx = torch.tensor([[3, 1, 4]])
    ref = generate(target, idx, 20)
    eos = int(ref[0, 6])
    out = speculative_generate(target, tiny(40, 1, 1, 16, 10), idx, 20, k=4, eos_id=eos)
    first = int((ref[0, 3:] == eos).nonzero()[0]) + 3
    assert torch.equal(out, ref[:, :first + 1])


def test_accept_rule_gives_the_target_distribution():
    """Synthetic p, q; 100,000 independent rounds at once."""
    g = torch.Generator().manual_seed(0)
    B, k, V = 100_000, 2, 6
    p = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    draft = torch.stack([torch.multinomial(q[i], B, replacement=True, generator=g) for i in range(k)], 1)
    n_acc, nxt = speculative_accept(p.expand(B, -1, -1), q.expand(B, -1, -1), draft, g)
    first = torch.where(n_acc >= 1, draft[:, 0], nxt)
    assert chi2_pvalue(torch.bincount(first, minlength=V).double(), p[0].double()) > ALPHA
    two = n_acc >= 1  # rounds that emitted a second token
    second = torch.where(n_acc[two] >= 2, draft[two, 1], nxt[two])
    assert chi2_pvalue(torch.bincount(second, minlength=V).double(), p[1].double()) > ALPHA
    # acceptance probability of the first draft = sum_x min(p, q) (Leviathan et al., eq. in 3.3)
    assert float((n_acc >= 1).double().mean()) == pytest.approx(float(torch.minimum(p[0], q[0]).sum()), abs=0.01)
    # power: the draft's own tokens are NOT distributed as p
    assert chi2_pvalue(torch.bincount(draft[:, 0], minlength=V).double(), p[0].double()) < ALPHA


def test_sampled_output_distribution_equals_target_end_to_end():
    """2,500 two-token continuations, k = 1 (one rejection test plus the bonus token per round)."""
    V = 5
    target, draft = tiny(V, 0, 2, 16, 4), tiny(V, 7, 1, 16, 4)
    idx = torch.tensor([[1]])
    probs = torch.zeros(V, V, dtype=torch.float64)  # exact target joint of the two tokens
    with torch.no_grad():
        p1 = torch.softmax(target(idx)[0, -1].double(), -1)
        for a in range(V):
            probs[a] = p1[a] * torch.softmax(target(torch.tensor([[1, a]]))[0, -1].double(), -1)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(V * V, dtype=torch.float64)
    draft_counts = torch.zeros(V * V, dtype=torch.float64)
    for _ in range(2500):
        out = speculative_generate(target, draft, idx, 2, k=1, temperature=1.0, generator=g)
        counts[int(out[0, 1]) * V + int(out[0, 2])] += 1
    assert chi2_pvalue(counts, probs.reshape(-1)) > ALPHA
    for _ in range(2500):  # power: the draft alone gives a detectably different distribution
        out = generate(draft, idx, 2, temperature=1.0, generator=g)
        draft_counts[int(out[0, 1]) * V + int(out[0, 2])] += 1
    assert chi2_pvalue(draft_counts, probs.reshape(-1)) < ALPHA


def test_bad_input():
    t = tiny(40, 0, 1, 16)
    with pytest.raises(ValueError, match="vocab"):
        speculative_generate(t, tiny(41, 0, 1, 16), torch.tensor([[1]]), 5)
    with pytest.raises(ValueError, match="k "):
        speculative_generate(t, t, torch.tensor([[1]]), 5, k=0)
    with pytest.raises(ValueError, match="one prompt"):
        speculative_generate(t, t, torch.tensor([[1], [2]]), 5)
    with pytest.raises(ValueError, match="context"):
        speculative_generate(t, t, torch.tensor([[1] * 30]), 5)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(t, t, torch.tensor([[1]]), 5, temperature=-1)
