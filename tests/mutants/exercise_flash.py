"""Mutants of the Chapter 3b FlashAttention exercise: the mistakes learners make, and correct alternatives."""

SOLUTION = "ch03_attention/solutions/exercise_flash.ipynb"

# The solution, with named slots that each mutant replaces.
_BASE = '''
def flash_forward(q, k, v, causal=True, block_q=32, block_k=32):
    VALIDATE
    B, H, T_q, d = q.shape
    T_k, d_v = k.shape[2], v.shape[-1]
    scale = SCALE
    out = torch.empty(B, H, T_q, d_v, dtype=q.dtype)
    lse = torch.empty(B, H, T_q, dtype=q.dtype)
    for i0 in QUERY_RANGE:
        i1 = min(i0 + block_q, T_q)
        q_i = q[:, :, i0:i1] * scale
        m = torch.full((B, H, i1 - i0), float("-inf"), dtype=q.dtype)
        l = torch.zeros(B, H, i1 - i0, dtype=q.dtype)
        acc = torch.zeros(B, H, i1 - i0, d_v, dtype=q.dtype)
        k_end = KEY_END
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            s = q_i @ k[:, :, j0:j1].transpose(-2, -1)
            MASK
            m_new = MAX
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)
            l = L_UPDATE
            acc = ACC_UPDATE
            m = m_new
        out[:, :, i0:i1] = FINAL
        lse[:, :, i0:i1] = LSE
    return out, lse
'''

_DEFAULTS = dict(
    VALIDATE='''for name, b in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{name} must be a positive int, got {b!r}")''',
    SCALE="1.0 / math.sqrt(d)",
    QUERY_RANGE="range(0, T_q, block_q)",
    KEY_END="min(i1, T_k) if causal else T_k",
    MASK='''if causal and j1 - 1 > i0:
                future = torch.arange(j0, j1)[None, :] > torch.arange(i0, i1)[:, None]
                s = s.masked_fill(future, float("-inf"))''',
    MAX="torch.maximum(m, s.amax(dim=-1))",
    L_UPDATE="alpha * l + p.sum(dim=-1)",
    ACC_UPDATE="alpha[..., None] * acc + p @ v[:, :, j0:j1]",
    FINAL="acc / l[..., None]",
    LSE="m + torch.log(l)",
)


def _flash(**changes):
    src = _BASE
    for key, value in {**_DEFAULTS, **changes}.items():
        src = src.replace(key, value)
    return src


MUTANTS = {
    "running sum not rescaled when the max changes": dict(
        expect="running sum l is not rescaled", code=_flash(L_UPDATE="l + p.sum(dim=-1)")),
    "output accumulator not rescaled when the max changes": dict(
        expect="output accumulator is not rescaled", code=_flash(ACC_UPDATE="acc + p @ v[:, :, j0:j1]")),
    "neither rescaled": dict(
        expect="neither the running sum nor the output", code=_flash(
            L_UPDATE="l + p.sum(dim=-1)", ACC_UPDATE="acc + p @ v[:, :, j0:j1]")),
    "divides by the sum once per tile instead of at the end": dict(
        expect="once per tile", code=_flash(
            ACC_UPDATE="(alpha[..., None] * acc + p @ v[:, :, j0:j1]) / l[..., None]",   # l is already updated
            FINAL="acc")),
    "causal mask from tile-local positions, only on the i == j diagonal tiles": dict(
        expect="positions inside the tile", code=_flash(MASK='''if causal and i0 // block_q == j0 // block_k:
                future = torch.arange(j1 - j0)[None, :] > torch.arange(i1 - i0)[:, None]
                s = s.masked_fill(future, float("-inf"))''')),
    "causal mask only on tiles with the same block index (absolute positions)": dict(
        expect="differs from SDPA", code=_flash(MASK='''if causal and i0 // block_q == j0 // block_k:
                future = torch.arange(j0, j1)[None, :] > torch.arange(i0, i1)[:, None]
                s = s.masked_fill(future, float("-inf"))''')),
    "no 1/sqrt(d) scale": dict(expect="1/sqrt(d)", code=_flash(SCALE="1.0")),
    "no running max (exp of raw scores)": dict(
        expect="overflow", code=_flash(MAX="torch.zeros_like(m)")),
    "tiles above the diagonal computed and masked (no skipping)": dict(
        expect="skip the tiles", code=_flash(KEY_END="T_k", MASK='''if causal:
                future = torch.arange(j0, j1)[None, :] > torch.arange(i0, i1)[:, None]
                s = s.masked_fill(future, float("-inf"))''')),
    "ragged last query tile dropped": dict(
        expect="ragged", code=_flash(QUERY_RANGE="range(0, T_q - T_q % block_q or T_q, block_q)")),
    "logsumexp without the log of the sum": dict(expect="logsumexp", code=_flash(LSE="m")),
    "no ValueError for bad block sizes": dict(expect="should raise ValueError", code=_flash(VALIDATE="pass")),
    "full T x T softmax (not tiled)": dict(expect="materialised", code='''
def flash_forward(q, k, v, causal=True, block_q=32, block_k=32):
    if not (isinstance(block_q, int) and block_q > 0):
        raise ValueError(f"block_q must be a positive int, got {block_q!r}")
    if not (isinstance(block_k, int) and block_k > 0):
        raise ValueError(f"block_k must be a positive int, got {block_k!r}")
    T = q.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    # "tiles" only for the matmul with V: the scores are already materialised
    return torch.exp(scores - lse[..., None]) @ v, lse
'''),
}

ALTERNATIVES = {
    "keys in the outer loop (FlashAttention-1 order), state per query block": '''
def flash_forward(q, k, v, causal=True, block_q=32, block_k=32):
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if type(b) is not int or b <= 0:
            raise ValueError(f"{name}={b!r}: need a positive int")
    B, H, T_q, d = q.shape
    T_k = k.shape[2]
    starts = list(range(0, T_q, block_q))
    m = [torch.full((B, H, min(i0 + block_q, T_q) - i0), -math.inf) for i0 in starts]
    l = [torch.zeros_like(x) for x in m]
    acc = [torch.zeros(B, H, x.shape[-1], v.shape[-1]) for x in m]
    for j0 in range(0, T_k, block_k):
        j1 = min(j0 + block_k, T_k)
        k_j, v_j = k[:, :, j0:j1], v[:, :, j0:j1]
        for n, i0 in enumerate(starts):
            i1 = min(i0 + block_q, T_q)
            if causal and j0 >= i1:
                continue                      # above the diagonal
            s = (q[:, :, i0:i1] @ k_j.transpose(-2, -1)) / math.sqrt(d)
            if causal:
                s = torch.where(torch.arange(j0, j1)[None, :] <= torch.arange(i0, i1)[:, None], s, -math.inf)
            m_new = torch.maximum(m[n], s.max(-1).values)
            corr = torch.exp(m[n] - m_new)
            p = torch.exp(s - m_new.unsqueeze(-1))
            l[n] = corr * l[n] + p.sum(-1)
            acc[n] = corr.unsqueeze(-1) * acc[n] + p @ v_j
            m[n] = m_new
    out = torch.cat([a / s.unsqueeze(-1) for a, s in zip(acc, l)], dim=2)
    lse = torch.cat([mm + torch.log(s) for mm, s in zip(m, l)], dim=2)
    return out, lse
''',
    "sum kept in log space (running logsumexp, output normalised as it goes)": '''
def flash_forward(q, k, v, causal=True, block_q=32, block_k=32):
    if isinstance(block_q, bool) or not isinstance(block_q, int) or block_q < 1:
        raise ValueError(f"block_q must be a positive int, got {block_q!r}")
    if isinstance(block_k, bool) or not isinstance(block_k, int) or block_k < 1:
        raise ValueError(f"block_k must be a positive int, got {block_k!r}")
    B, H, T_q, d = q.shape
    T_k = k.shape[2]
    outs, lses = [], []
    for i0 in range(0, T_q, block_q):
        i1 = min(i0 + block_q, T_q)
        q_i = q[:, :, i0:i1] / math.sqrt(d)
        run_lse = torch.full((B, H, i1 - i0), -math.inf)      # log of the running sum, no separate max
        o = torch.zeros(B, H, i1 - i0, v.shape[-1])           # already normalised by exp(run_lse)
        for j0 in range(0, min(i1, T_k) if causal else T_k, block_k):
            j1 = min(j0 + block_k, T_k)
            s = q_i @ k[:, :, j0:j1].transpose(-2, -1)
            if causal and j1 > i0 + 1:
                s = s.masked_fill(torch.arange(j0, j1)[None, :] > torch.arange(i0, i1)[:, None], -math.inf)
            tile_lse = torch.logsumexp(s, dim=-1)
            new_lse = torch.logaddexp(run_lse, tile_lse)
            o = torch.exp(run_lse - new_lse)[..., None] * o + torch.exp(s - new_lse[..., None]) @ v[:, :, j0:j1]
            run_lse = new_lse
        outs.append(o)
        lses.append(run_lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)
''',
    "einsum with a padded key range": '''
def flash_forward(q, k, v, causal=True, block_q=32, block_k=32):
    for name, b in {"block_q": block_q, "block_k": block_k}.items():
        if not isinstance(b, int) or isinstance(b, bool) or b < 1:
            raise ValueError(f"{name} must be >= 1 (an int), got {b!r}")
    B, H, T, d = q.shape
    out = torch.zeros(B, H, T, v.shape[-1])
    lse = torch.zeros(B, H, T)
    for i0 in range(0, T, block_q):
        rows = torch.arange(i0, min(i0 + block_q, T))
        qi = q[:, :, rows] * d ** -0.5
        m = torch.full((B, H, len(rows)), float("-inf"))
        l = torch.zeros(B, H, len(rows))
        acc = torch.zeros(B, H, len(rows), v.shape[-1])
        last = int(rows[-1]) + 1 if causal else k.shape[2]
        for j0 in range(0, last, block_k):
            cols = torch.arange(j0, min(j0 + block_k, last))
            s = torch.einsum("bhqd,bhkd->bhqk", qi, k[:, :, cols])
            if causal:
                s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
            m2 = torch.maximum(m, s.amax(-1))
            e = torch.exp(s - m2[..., None])
            a = torch.exp(m - m2)
            l = l * a + e.sum(-1)
            acc = acc * a[..., None] + torch.einsum("bhqk,bhkd->bhqd", e, v[:, :, cols])
            m = m2
        out[:, :, rows] = acc / l[..., None]
        lse[:, :, rows] = m + l.log()
    return out, lse
''',
}
