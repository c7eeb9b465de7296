"""Mutants of the quantization exercise (ch06): realistic wrong solutions must fail a check whose
message names the mistake; alternative correct solutions must pass every check."""

SOLUTION = "ch06_generation/solutions/exercise_quantize.ipynb"

_ABSMAX = '''
def quantize_absmax(w, bits=8, group_size=None, clip=1.0):
    g = split_groups(w, bits, group_size)
    qmax = 2 ** (bits - 1) - 1
    {body}
    return q.reshape(w.shape).to(torch.int8), scale
'''

_ZP = '''
def quantize_zeropoint(w, bits=8, group_size=None):
    g = split_groups(w, bits, group_size)
    qmax = 2 ** bits - 1
    lo, hi = g.amin(-1).clamp(max=0.0), g.amax(-1).clamp(min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    {body}
    return q.reshape(w.shape).to(torch.int16), scale, zero_point.to(torch.int16)
'''

MUTANTS = {
    "max instead of absmax": dict(code=_ABSMAX.format(body='''scale = clip * g.amax(-1) / qmax
    scale = torch.where(scale <= 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(g / scale[..., None]), -qmax, qmax)'''), expect="absmax"),
    "zero point off by one": dict(code=_ZP.format(body='''zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax) + 1
    q = torch.clamp(torch.round(g / scale[..., None]) + zero_point[..., None], 0, qmax)'''), expect="off by one"),
    "int4 not clamped": dict(code=_ABSMAX.format(body='''scale = clip * g.abs().amax(-1) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(g / scale[..., None])'''), expect="clamp"),
    "groups along the wrong axis": dict(code='''
def split_groups(w, bits, group_size):
    if bits not in (2, 3, 4, 8):
        raise ValueError("bits")
    rows, cols = w.shape
    gs = cols if group_size is None else group_size
    if cols % gs:
        raise ValueError("group_size")
    if group_size is None:
        return w.float().reshape(rows, 1, cols)
    return w.float().t().reshape(cols, rows // gs, gs)      # groups down the columns
''', expect="axis"),
    "truncation instead of rounding": dict(code=_ABSMAX.format(body='''scale = clip * g.abs().amax(-1) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.trunc(g / scale[..., None]), -qmax, qmax)'''), expect="nearest"),
    "dequantize ignores the zero point": dict(code='''
def dequantize(q, scale, zero_point=None, group_size=None):
    rows, cols = q.shape
    gs = cols if group_size is None else group_size
    return (q.float().reshape(rows, cols // gs, gs) * scale[..., None]).reshape(rows, cols)
''', expect="zero point"),
    "qmax = 2**(bits-1) (8 for int4)": dict(code=_ABSMAX.format(body='''qmax = 2 ** (bits - 1)
    scale = clip * g.abs().amax(-1) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(g / scale[..., None]), -qmax, qmax)'''), expect="differ from shared"),
    "zero point from the raw minimum (range without 0)": dict(code='''
def quantize_zeropoint(w, bits=8, group_size=None):
    g = split_groups(w, bits, group_size)
    qmax = 2 ** bits - 1
    lo, hi = g.amin(-1), g.amax(-1)
    scale = (hi - lo) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    q = torch.clamp(torch.round(g / scale[..., None]) + zero_point[..., None], 0, qmax)
    return q.reshape(w.shape).to(torch.int16), scale, zero_point.to(torch.int16)
''', expect="scales differ"),
    "no argument checks": dict(code='''
def split_groups(w, bits, group_size):
    rows, cols = w.shape
    gs = cols if group_size is None else group_size
    return w.float().reshape(rows, -1, gs)
''', expect="ValueError"),
}

ALTERNATIVES = {
    "loops over groups": '''
def quantize_absmax(w, bits=8, group_size=None, clip=1.0):
    if bits not in (2, 3, 4, 8):
        raise ValueError("bits must be 2, 3, 4 or 8")
    rows, cols = w.shape
    gs = cols if group_size is None else group_size
    if cols % gs:
        raise ValueError("group_size must divide the row")
    qmax = 2 ** (bits - 1) - 1
    q = torch.empty(rows, cols, dtype=torch.int8)
    scale = torch.empty(rows, cols // gs)
    for r in range(rows):
        for j in range(cols // gs):
            block = w[r, j * gs:(j + 1) * gs].float()
            s = clip * float(block.abs().max()) / qmax
            s = torch.tensor(s if s > 0 else 1.0, dtype=torch.float32)
            scale[r, j] = s
            q[r, j * gs:(j + 1) * gs] = torch.clamp(torch.round(block / s), -qmax, qmax).to(torch.int8)
    return q, scale
''',
    "unflatten and aminmax": '''
def split_groups(w, bits, group_size):
    if bits not in {2, 3, 4, 8}:
        raise ValueError(f"unsupported bits {bits}")
    gs = w.shape[1] if group_size is None else group_size
    if w.shape[1] % gs != 0:
        raise ValueError("group_size must divide cols")
    return w.float().unflatten(1, (w.shape[1] // gs, gs))

def quantize_zeropoint(w, bits=8, group_size=None):
    g = split_groups(w, bits, group_size)
    levels = (1 << bits) - 1
    mn, mx = torch.aminmax(g, dim=-1)
    mn, mx = torch.minimum(mn, torch.zeros_like(mn)), torch.maximum(mx, torch.zeros_like(mx))
    scale = (mx - mn) / levels
    scale[scale == 0] = 1.0
    zp = (-mn / scale).round().clamp(0, levels)
    q = ((g / scale.unsqueeze(-1)).round() + zp.unsqueeze(-1)).clamp(0, levels)
    return q.flatten(1).long(), scale, zp.long()
''',
    "dequantize with repeat_interleave": '''
def dequantize(q, scale, zero_point=None, group_size=None):
    gs = q.shape[1] if group_size is None else group_size
    s = scale.float().repeat_interleave(gs, dim=1)
    z = 0.0 if zero_point is None else zero_point.float().repeat_interleave(gs, dim=1)
    return (q.float() - z) * s
''',
}
