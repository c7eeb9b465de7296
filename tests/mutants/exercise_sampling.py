"""Mutants of the Chapter 6 sampling exercise: the mistakes learners make, and correct alternatives."""

SOLUTION = "ch06_generation/solutions/exercise_sampling.ipynb"

_SAMPLE = '''
def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    BODY
'''
_BODY_OK = '''logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]'''

_TOP_P = '''
def top_p_filter(logits, p):
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    DROP
    MAP
    return logits.masked_fill(drop, float("-inf"))
'''


def _top_p(drop="drop_sorted = torch.cumsum(probs, dim=-1) - probs >= p",
           mapping="drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)"):
    return _TOP_P.replace("DROP", drop).replace("MAP", mapping)


MUTANTS = {
    "top-k keeps exactly k on ties": dict(expect="tied", code='''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be >= 1")
    k = min(k, logits.size(-1))
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))
'''),
    "top-k drops the k-th itself": dict(expect="keep the k largest", code='''
def top_k_filter(logits, k):
    if k < 1:
        raise ValueError("k must be >= 1")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits <= kth, float("-inf"))
'''),
    "top-p drops the token that crosses p": dict(expect="keep the token that crosses p", code=_top_p(
        drop="drop_sorted = torch.cumsum(probs, dim=-1) > p")),
    "top-p mask left in sorted order": dict(expect="scatter", code=_top_p(mapping="drop = drop_sorted")),
    "temperature applied after the filters": dict(expect="temperature must be applied before", code=_SAMPLE.replace(
        "BODY", '''if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1, generator=generator)[:, 0]''')),
    "top-p before top-k": dict(expect="top-p before top-k", code=_SAMPLE.replace(
        "BODY", '''logits = logits.float() / temperature
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]''')),
    "the generator is not used": dict(expect="generator=generator", code=_SAMPLE.replace(
        "BODY", _BODY_OK.replace(", generator=generator)", ")"))),
    "no ValueError for top_k < 1": dict(expect="must raise ValueError", code='''
def top_k_filter(logits, k):
    k = max(1, min(k, logits.size(-1)))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))
'''),
}

ALTERNATIVES = {
    "inverse-CDF sampling with torch.rand and searchsorted": _SAMPLE.replace("BODY", '''z = logits.float() / temperature
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    cdf = torch.softmax(z, dim=-1).cumsum(dim=-1)
    u = torch.rand(z.shape[0], 1, generator=generator, device=z.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=z.shape[-1] - 1)'''),
    "sort-based filters and Gumbel-max sampling": '''
def top_k_filter(logits, k):
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits[..., min(k, logits.size(-1)) - 1].unsqueeze(-1)
    return torch.where(logits >= kth, logits, torch.full_like(logits, float("-inf")))

def top_p_filter(logits, p):
    if not (0 < p <= 1):
        raise ValueError(f"p must be in (0, 1], got {p}")
    probs = logits.float().softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) < p
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))

def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0:
        return logits.argmax(-1)
    z = logits.double() / temperature
    z = top_k_filter(z, top_k) if top_k is not None else z
    z = top_p_filter(z, top_p) if top_p is not None else z
    u = torch.rand(z.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return (z - torch.log(-torch.log(u))).argmax(-1)
''',
}
