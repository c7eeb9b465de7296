"""Mutants for ch04_gpt/solutions/exercise_rope.ipynb (the course's mutant contract: each mutant must make at least one check fail with a message containing ``expect``;
each alternative must pass every check)."""

SOLUTION = "ch04_gpt/solutions/exercise_rope.ipynb"

MUTANTS = {
    "interleaved pairs instead of half-split": dict(code='''
def apply_rope(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., : x.size(-1) // 2], sin[..., : x.size(-1) // 2]
    return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
''', expect="interleav"),
    "positions not offset under the KV cache": dict(code='''
def rope_at(x, start, theta=10000.0):
    cos, sin = rope_tables(torch.arange(x.size(-2)), x.size(-1), theta)
    return apply_rope(x, cos, sin)
''', expect="not offset"),
    "RMSNorm subtracts the mean": dict(code='''
class RMSNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
''', expect="subtract the mean"),
    "eps outside the square root": dict(code='''
class RMSNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight
''', expect="outside the square root"),
    "rotation in the wrong direction": dict(code='''
def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, -x1], dim=-1) * sin
''', expect="wrong direction"),
    "frequencies theta^(-i/d) instead of theta^(-2i/d)": dict(code='''
def rope_tables(positions, head_dim, theta=10000.0):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim // 2).float() / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()
''', expect="frequencies"),
    "angles not duplicated for the second half": dict(code='''
def rope_tables(positions, head_dim, theta=10000.0):
    inv_freq = 1.0 / theta ** (torch.arange(0, 2 * head_dim, 2).float() / head_dim)   # d angles, not d/2 twice
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()
''', expect="angles twice"),
    "RMSNorm without its gain": dict(code='''
class RMSNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
''', expect="gain is missing"),
}

ALTERNATIVES = {
    "complex-number rotation": '''
def apply_rope(x, cos, sin):
    d = x.size(-1) // 2
    z = torch.complex(x[..., :d].float(), x[..., d:].float())          # pair i as x_i + i*x_{i+d/2}
    rot = torch.complex(cos[..., :d], sin[..., :d])                     # e^{i * angle}
    out = z * rot
    return torch.cat([out.real, out.imag], dim=-1).to(x.dtype)
''',
    "precomputed cos/sin tables sliced by position": '''
_MAX = 4096
_TABLES = {}
def rope_at(x, start, theta=10000.0):
    key = (x.size(-1), theta)
    if key not in _TABLES:
        _TABLES[key] = rope_tables(torch.arange(_MAX), x.size(-1), theta)
    cos, sin = _TABLES[key]
    T = x.size(-2)
    return apply_rope(x, cos[start:start + T], sin[start:start + T])
''',
    "RMSNorm via the vector norm": '''
class RMSNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
    def forward(self, x):
        ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) ** 2 / x.size(-1)
        return self.weight * x / torch.sqrt(ms + self.eps)
''',
}
