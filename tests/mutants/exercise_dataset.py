"""Mutants of the Chapter 2 dataset exercise: the mistakes learners make, and correct alternatives."""

SOLUTION = "ch02_embeddings/solutions/exercise_dataset.ipynb"

_BASE = '''
class GPTDataset(Dataset):
    def __init__(self, token_ids, context_length, stride):
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.tokens = TOKENS
        if len(self.tokens) < context_length + 1:
            raise ValueError(f"text is shorter than the context: {len(self.tokens)} < {context_length + 1}")
        self.context_length, self.stride = context_length, stride

    def __len__(self):
        return LEN

    def __getitem__(self, i):
        CHECK
        s, T = START, self.context_length
        return self.tokens[s:s + T], self.tokens[TARGET]
'''


def _ds(tokens="torch.as_tensor(token_ids, dtype=torch.long)",
        length="(len(self.tokens) - self.context_length - 1) // self.stride + 1",
        check="if not 0 <= i < len(self):\n            raise IndexError(i)",
        start="i * self.stride", target="s + 1:s + T + 1"):
    return (_BASE.replace("TOKENS", tokens).replace("LEN", length).replace("CHECK", check)
            .replace("START", start).replace("TARGET", target))


MUTANTS = {
    "no IndexError past the end (iteration never stops)": dict(expect="IndexError", code=_ds(check="pass")),
    "len() counts a window without its last target": dict(
        expect="T + 1", code=_ds(length="(len(self.tokens) - self.context_length) // self.stride + 1")),
    "targets not shifted": dict(expect="shift", code=_ds(target="s:s + T")),
    "windows start at i, ignoring the stride": dict(expect="i * stride", code=_ds(start="i")),
    "int32 tokens": dict(expect="torch.long", code=_ds(tokens="torch.as_tensor(token_ids, dtype=torch.int32)")),
    "no ValueError for a text shorter than the context": dict(expect="must raise ValueError", code='''
class GPTDataset(Dataset):
    def __init__(self, token_ids, context_length, stride):
        if context_length < 1 or stride < 1:
            raise ValueError("context_length and stride must be >= 1")
        self.tokens = torch.as_tensor(token_ids, dtype=torch.long)
        self.context_length, self.stride = context_length, stride

    def __len__(self):
        return max(0, (len(self.tokens) - self.context_length - 1) // self.stride + 1)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        s, T = i * self.stride, self.context_length
        return self.tokens[s:s + T], self.tokens[s + 1:s + T + 1]
'''),
    "the DataLoader ignores shuffle": dict(expect="shuffle", code='''
def create_dataloader(token_ids, batch_size, context_length, stride, shuffle=True, drop_last=True, num_workers=0):
    return DataLoader(GPTDataset(token_ids, context_length, stride), batch_size=batch_size, shuffle=False,
                      drop_last=drop_last, num_workers=num_workers)
'''),
    "the DataLoader ignores drop_last": dict(expect="drop_last", code='''
def create_dataloader(token_ids, batch_size, context_length, stride, shuffle=True, drop_last=True, num_workers=0):
    return DataLoader(GPTDataset(token_ids, context_length, stride), batch_size=batch_size, shuffle=shuffle,
                      drop_last=True, num_workers=num_workers)
'''),
}

ALTERNATIVES = {
    "all windows at once with Tensor.unfold": '''
class GPTDataset(Dataset):
    def __init__(self, token_ids, context_length, stride):
        if context_length < 1 or stride < 1:
            raise ValueError(f"context_length and stride must be >= 1, got {context_length} and {stride}")
        t = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)
        if t.numel() < context_length + 1:
            raise ValueError(f"text is shorter than the context: need context_length + 1 = {context_length + 1} tokens")
        windows = t.unfold(0, context_length + 1, stride)       # [n_windows, T + 1]
        self.x, self.y = windows[:, :-1], windows[:, 1:]

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        if i >= len(self):
            raise IndexError(f"window {i} of {len(self)}")
        return self.x[i], self.y[i]
''',
    "a list of starts and plain Python ints": '''
class GPTDataset(Dataset):
    def __init__(self, token_ids, context_length, stride):
        if context_length < 1:
            raise ValueError("context_length must be at least 1")
        if stride < 1:
            raise ValueError("stride must be at least 1")
        ids = [int(t) for t in token_ids]
        if len(ids) <= context_length:
            raise ValueError(f"{len(ids)} tokens: a window needs context_length + 1 = {context_length + 1}")
        self.ids, self.T = ids, context_length
        self.starts = list(range(0, len(ids) - context_length, stride))

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        s = self.starts[i]            # a list raises IndexError by itself
        return torch.tensor(self.ids[s:s + self.T]), torch.tensor(self.ids[s + 1:s + self.T + 1])
''',
}
