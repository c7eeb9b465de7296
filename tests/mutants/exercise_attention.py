"""Mutants of the Chapter 3 attention exercise: the mistakes learners make, and correct alternatives."""

SOLUTION = "ch03_attention/solutions/exercise_attention.ipynb"

_BASE = '''
class CausalMultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, n_heads, qkv_bias=False):
        super().__init__()
        DIVISIBLE
        self.d_out, self.n_heads, self.head_dim = d_out, n_heads, d_out // n_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        MASK

    def forward(self, x):
        B, T, _ = x.shape
        split = lambda t: SPLIT
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = q @ k.transpose(-2, -1) / SCALE
        WEIGHTS
        ctx = MERGE
        return self.out_proj(ctx)
'''

_DEFAULTS = dict(
    DIVISIBLE='if d_out % n_heads:\n            raise ValueError(f"d_out={d_out} must be divisible by n_heads={n_heads}")',
    MASK='self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1))',
    SPLIT="t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)",
    SCALE="math.sqrt(self.head_dim)",
    WEIGHTS='weights = torch.softmax(scores.masked_fill(self.mask[:T, :T], float("-inf")), dim=-1)',
    MERGE="(weights @ v).transpose(1, 2).reshape(B, T, self.d_out)",
)


def _attn(**changes):
    src = _BASE
    for key, value in {**_DEFAULTS, **changes}.items():
        src = src.replace(key, value)
    return src


MUTANTS = {
    "mask kept as a plain attribute": dict(expect="register_buffer", code=_attn(
        MASK="self.mask = torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)")),
    "no 1/sqrt(head_dim) scaling": dict(expect="no scaling", code=_attn(SCALE="1.0")),
    "scaled by sqrt(d_out)": dict(expect="sqrt(d_out)", code=_attn(SCALE="math.sqrt(self.d_out)")),
    "mask applied after the softmax": dict(expect="after the softmax", code=_attn(
        WEIGHTS="weights = torch.softmax(scores, dim=-1).masked_fill(self.mask[:T, :T], 0.0)")),
    "heads split without the transpose": dict(expect="head split", code=_attn(
        SPLIT="t.reshape(B, self.n_heads, T, self.head_dim)", MERGE="(weights @ v).reshape(B, T, self.d_out)")),
    "heads merged without transposing back": dict(expect="without transposing back", code=_attn(
        MERGE="(weights @ v).reshape(B, T, self.d_out)")),
    "mask on the wrong triangle (hides the past)": dict(expect="the future leaks", code=_attn(
        MASK='self.register_buffer("mask", torch.tril(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=-1))')),
    "no error when d_out is not divisible by n_heads": dict(expect="should raise ValueError", code=_attn(DIVISIBLE="pass")),
}

ALTERNATIVES = {
    "einsum and torch.where": '''
class CausalMultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, n_heads, qkv_bias=False):
        super().__init__()
        if n_heads <= 0 or d_out % n_heads != 0:
            raise ValueError(f"n_heads={n_heads} does not divide d_out={d_out}")
        self.d_out, self.n_heads, self.head_dim = d_out, n_heads, d_out // n_heads
        self.W_query, self.W_key, self.W_value = (nn.Linear(d_in, d_out, bias=qkv_bias) for _ in range(3))
        self.out_proj = nn.Linear(d_out, d_out)
        i = torch.arange(context_length)
        self.register_buffer("mask", i[None, :] > i[:, None])      # key index > query index

    def forward(self, x):
        B, T, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        q, k, v = (lin(x).view(B, T, H, hd) for lin in (self.W_query, self.W_key, self.W_value))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * hd ** -0.5
        scores = torch.where(self.mask[:T, :T], torch.tensor(float("-inf"), dtype=scores.dtype), scores)
        ctx = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, T, self.d_out)
        return self.out_proj(ctx)
''',
    "PyTorch's fused scaled_dot_product_attention with the buffer as its mask": '''
class CausalMultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, n_heads, qkv_bias=False):
        super().__init__()
        if d_out % n_heads:
            raise ValueError("d_out must be divisible by n_heads")
        self.d_out, self.n_heads, self.head_dim = d_out, n_heads, d_out // n_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.register_buffer("mask", torch.ones(context_length, context_length, dtype=torch.bool).triu(1))

    def forward(self, x):
        B, T, _ = x.shape
        heads = lambda t: t.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x)),
                                             attn_mask=~self.mask[:T, :T])
        return self.out_proj(ctx.transpose(1, 2).flatten(2))
''',
}
