"""Mutants of the Chapter 4 exercise (the pre-LN block and the GPT): learners' mistakes, and correct alternatives."""

SOLUTION = "ch04_gpt/solutions/exercise_gpt.ipynb"

_BLOCK = '''
class MyBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.d_model, cfg.context_length, cfg.n_heads,
                                       dropout=cfg.dropout, qkv_bias=cfg.qkv_bias)
        self.ln2 = LayerNorm(cfg.d_model)
        self.mlp = FeedForward(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.p = cfg.dropout

    def forward(self, x):
        BODY
        return x
'''

_MODEL = '''
class MyGPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = BLOCKS
        self.final_norm = LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        TIE

    def forward(self, idx):
        B, T = idx.shape
        if T > self.cfg.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length={self.cfg.context_length}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return OUT

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())
'''


def _model(blocks="nn.ModuleList(MyBlock(cfg) for _ in range(cfg.n_layers))",
           tie="self.lm_head.weight = self.tok_emb.weight", out="self.lm_head(self.final_norm(x))"):
    return _MODEL.replace("BLOCKS", blocks).replace("TIE", tie).replace("OUT", out)


MUTANTS = {
    "post-LN block": dict(expect="post-LN", code=_BLOCK.replace("BODY", '''x = self.ln1(x + self.drop(self.attn(x)))
        x = self.ln2(x + self.drop(self.mlp(x)))''')),
    "no residual around attention": dict(expect="attention branch has no residual", code=_BLOCK.replace(
        "BODY", '''x = self.drop(self.attn(self.ln1(x)))
        x = x + self.drop(self.mlp(self.ln2(x)))''')),
    "no residual around the feed-forward": dict(expect="feed-forward branch has no residual", code=_BLOCK.replace(
        "BODY", '''x = x + self.drop(self.attn(self.ln1(x)))
        x = self.drop(self.mlp(self.ln2(x)))''')),
    "dropout left on in eval mode (F.dropout)": dict(expect="dropout is still on in eval mode", code=_BLOCK.replace(
        "BODY", '''x = x + F.dropout(self.attn(self.ln1(x)), self.p, training=True)
        x = x + F.dropout(self.mlp(self.ln2(x)), self.p, training=True)''')),
    "both branches read the block's input": dict(expect="reads the block's input", code=_BLOCK.replace(
        "BODY", '''x = x + self.drop(self.attn(self.ln1(x))) + self.drop(self.mlp(self.ln2(x)))''')),
    "untied LM head": dict(expect="untied LM head", code=_model(tie="pass")),
    "no final norm": dict(expect="no final norm", code=_model(out="self.lm_head(x)")),
    "one block repeated n_layers times": dict(expect="separate blocks", code=_model(
        blocks="nn.ModuleList([MyBlock(cfg)] * cfg.n_layers)")),
}

ALTERNATIVES = {
    "num_parameters de-duplicated by data_ptr, nn.Sequential blocks": '''
class MyGPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.Sequential(*[MyBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight

    def forward(self, idx):
        if idx.shape[-1] > self.cfg.context_length:
            raise ValueError("sequence longer than the context")
        pos = self.pos_emb.weight[: idx.shape[-1]]
        return self.lm_head(self.final_norm(self.blocks(self.drop(self.tok_emb(idx) + pos))))

    def num_parameters(self):
        seen = {}
        for _, p in self.named_parameters(remove_duplicate=False):
            seen[p.data_ptr()] = p.numel()
        return sum(seen.values())
''',
    "a block with an explicit training flag and a sub-layer helper": '''
class MyBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = LayerNorm(cfg.d_model), LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.d_model, cfg.context_length, cfg.n_heads,
                                       dropout=cfg.dropout, qkv_bias=cfg.qkv_bias)
        self.mlp = FeedForward(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.p = cfg.dropout

    def _branch(self, x, norm, layer):
        return x + F.dropout(layer(norm(x)), self.p, training=self.training)

    def forward(self, x):
        return self._branch(self._branch(x, self.ln1, self.attn), self.ln2, self.mlp)
''',
}
