md(f"""
# Chapter 3b — Efficient attention: FlashAttention's tiling, sliding windows, sparse and linear attention

{colab_badge(NB)}

Chapter 3 ended by handing attention to `F.scaled_dot_product_attention` (SDPA) and saying it is
fast and needs $O(T)$ memory instead of $O(T^2)$. This notebook opens the box. We build, in plain
PyTorch, the ideas behind it and behind the long-context models of today, prove each one equal
to exact attention (or measure how far it is), and see where the $O(T^2)$ goes:

1. the **online softmax**: a softmax computed in one pass over chunks;
2. **FlashAttention's forward pass**: tiles of queries and keys, running max and sum, skipped tiles;
3. its **peak memory**, measured against the materialised $T \\times T$ scores;
4. **why it is fast on a GPU**: the HBM traffic, worked out for $T$ = 1k … 16k;
5. the **backward pass by recomputation** from the saved logsumexp;
6. **sliding-window attention** (Mistral, Gemma): the mask, $O(T \\cdot w)$, a KV cache bounded by $w$,
   quality against $w$ on the Shakespeare plays, and attention sinks;
7. **sparse attention** (Child et al. 2019): local + strided masks and the FLOPs they save;
8. **linear attention** (Katharopoulos et al. 2020): parallel and recurrent forms, $O(T)$ measured,
   and the quality gap against softmax attention;
9. **GQA/MQA from the decode side**: KV-cache bytes and decode speed against multi-head attention;
10. the same masks in PyTorch's **FlexAttention**.

Everything lives in `shared/efficient_attention.py` (re-exported from `shared.attention`);
`ch03_attention/bench_attention.py --cores` benchmarks it. Running time: under a minute with
`LLM_PROFILE=smoke`, a few minutes on a laptop CPU with the default profile (five tiny models
are trained in sections 6 and 8).
""")
code(setup_cell("ch03_attention"))
code("""
from shared.runtime import PROFILE, DEVICE, pick, set_seed
set_seed(0)
print(f"profile={PROFILE} device={DEVICE}")
""")
code("""
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from shared.attention import (MultiHeadAttention, flash_attention, linear_attention, sliding_window_mask,
                              strided_sparse_mask)
from shared.efficient_attention import _check_positive_int, _check_qkv, elu_feature_map  # used by the code shown below
from bench_attention import peak_memory_fn   # peak bytes of one call (profiler on CPU, CUDA counters on GPU)
""")

# ---------------------------------------------------------------- 1 online softmax
md(r"""
## 1. The online softmax

**Why.** Attention's row $i$ is $o_i = \sum_j \operatorname{softmax}(s_i)_j\, v_j$ with scores
$s_{ij} = q_i \cdot k_j / \sqrt{d}$. Written naively, the softmax needs the *whole* row of
scores first (for its maximum and its sum), so the $T \times T$ matrix is stored. If the softmax
could be computed while the keys stream past in chunks, nothing $T \times T$ would ever exist.

**The maths** (Milakov & Gimelshein, 2018). A stable softmax subtracts the row maximum $m$:
$\operatorname{softmax}(s)_j = e^{s_j - m} / \ell$ with $\ell = \sum_j e^{s_j - m}$. Keep a running
maximum $m$ and a running sum $\ell$ over the chunks seen so far. When a new chunk $c$ arrives,

$$m' = \max(m, \max_{j \in c} s_j), \qquad \ell' = \ell\, e^{m - m'} + \sum_{j \in c} e^{s_j - m'} .$$

The factor $e^{m - m'} \le 1$ **rescales** the old sum to the new maximum. The same trick carries
the output along: $\mathrm{acc}' = \mathrm{acc}\; e^{m - m'} + \sum_{j \in c} e^{s_j - m'} v_j$, and at the
very end $o = \mathrm{acc} / \ell$. One pass, constant memory per row, exact.

**The code.** One row of 1,000 scores, in chunks of 64, against `torch.logsumexp` (which is
$m + \log \ell$). The scores are scaled so that a naive `exp` overflows in float32.
""")
code("""
def online_logsumexp(s, chunk):
    \"\"\"log sum_j exp(s_j) in one pass over chunks of s: [T] -> float (running max m and sum l).\"\"\"
    m, l = -math.inf, 0.0
    for c in s.split(chunk):
        m_new = max(m, c.max().item())
        l = l * math.exp(m - m_new) + torch.exp(c - m_new).sum().item()   # rescale, then add the chunk
        m = m_new
    return m + math.log(l)

torch.manual_seed(0)
s = 60 * torch.randn(1000)                       # [T] scores; exp(s) overflows float32 above ~88
print("naive   log(sum(exp(s))) =", torch.log(torch.exp(s).sum()).item())
print("online  (chunks of 64)   =", online_logsumexp(s, 64))
print("torch.logsumexp          =", torch.logsumexp(s, 0).item())
assert abs(online_logsumexp(s, 64) - torch.logsumexp(s, 0).item()) < 1e-3
""")
md(r"""
The naive version gives `inf`; the online one agrees with `torch.logsumexp` to float32
precision, chunk by chunk. Forgetting the rescale factor $e^{m - m'}$ is the classic bug: the old
sum stays expressed relative to an old, smaller maximum and is over-counted. (The exercise makes
you write this and checks for exactly that mistake.)

## 2. FlashAttention's forward pass, tile by tile

**Why.** Now apply the online softmax to a whole block of queries at once. Split $Q$
(`[B, H, T, d]`) into blocks of $b_q$ rows and $K, V$ into blocks of $b_k$ rows. For each query
block, visit the key/value blocks one at a time: compute the tile of scores $S_{ij} = Q_i K_j^\top$
(`[b_q, b_k]`), update the running max $m$, sum $\ell$ and output accumulator per query row, then
throw the tile away. This is algorithm 1 of Dao et al., "FlashAttention" (2022), with the loop
order of FlashAttention-2 (queries outside, keys inside), so each query block's output is
finished, and divided by $\ell$, once.

**Causal masking per tile.** With queries at positions $i$ and keys at $j$, causal attention
needs $j \le i$. Three kinds of tile:

* entirely **above** the diagonal (every $j > i$): skipped, never computed — about half of them;
* entirely **below**: no mask needed at all;
* **crossing** the diagonal: masked element by element with $-\infty$.

A sliding window (section 6) adds a second diagonal: tiles entirely left of the band are
skipped too. Two small helpers decide which keys a query block needs and which tiles need a mask:
""")
code("# shared: shared.efficient_attention._key_range")
code("# shared: shared.efficient_attention._tile_mask")
md(r"""
And the forward pass. It accumulates in float32 even for bf16/fp16 inputs (as the GPU kernels do),
and returns the **logsumexp** $L_i = m_i + \log \ell_i$ of every row, the one number per row that
the backward pass needs (section 5).
""")
code("# shared: shared.efficient_attention.flash_attention_forward")
md(r"""
**Check.** Against SDPA in float32, for several sequence lengths (including ones that are not a
multiple of the block, so the last tile is ragged), block sizes, head sizes, causal and not.
`flash_attention` is the public entry point: it validates the inputs and makes the pass
differentiable.
""")
code("""
worst = 0.0
for T in pick(smoke=(1, 100, 257), cpu=(1, 100, 257, 513), gpu=(1, 100, 257, 1000)):
    for d in (16, 64):
        for block_q, block_k in ((64, 64), (32, 128), (24, 40)):
            for causal in (True, False):
                q, k, v = torch.randn(3, 2, 3, T, d).unbind(0)          # [B=2, H=3, T, d] each
                ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                out = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
                worst = max(worst, (out - ref).abs().max().item())
print(f"largest |flash_attention - SDPA| over {len(pick(smoke=(1, 100, 257), cpu=(1, 100, 257, 513)))} lengths x 2 head sizes x 3 tilings x causal/not: {worst:.1e}")
assert worst < 1e-5
""")
md(r"""
Equal to SDPA within float32 rounding everywhere. Which tiles were computed? For $T = 512$ and
$64 \times 64$ tiles, plain causal attention computes the 36 tiles on and below the diagonal out
of 64, and a sliding window of 128 only the band:
""")
code("""
def computed_tiles(T, block, causal=True, window=None):
    \"\"\"[T/block, T/block] grid: 2 = computed with a mask, 1 = computed without, 0 = skipped.\"\"\"
    from shared.efficient_attention import _key_range, _tile_mask
    n = math.ceil(T / block)
    grid = np.zeros((n, n))
    for a in range(n):
        lo, hi = _key_range(a * block, min((a + 1) * block, T), T, 0, causal, window)
        for b in range(lo // block, math.ceil(hi / block)):
            m = _tile_mask(a * block, (a + 1) * block, b * block, (b + 1) * block, 0, causal, window, "cpu")
            grid[a, b] = 1 if m is None else 2
    return grid

fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
for ax, (title, window) in zip(axes, (("causal", None), ("causal, sliding window w = 128", 128))):
    grid = computed_tiles(512, 64, window=window)
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=2.5)
    ax.set(title=f"{title}: {int((grid > 0).sum())} of {grid.size} tiles",
           xlabel="key block j (64 keys each)", ylabel="query block i (64 queries each)")
    for (a, b), val in np.ndenumerate(grid):
        if val:
            ax.text(b, a, "mask" if val == 2 else "", ha="center", va="center", fontsize=6)
fig.suptitle("Tiles FlashAttention computes for T = 512 (blank = skipped; 'mask' = crosses a boundary)")
plt.tight_layout(); plt.show()
""")

# ---------------------------------------------------------------- 3 memory
md(r"""
## 3. Peak memory: tiled against materialised

**Why.** The point of the tiling is memory. The hand-written attention of Chapter 3 stores the
scores and the weights, each `[B, H, T, T]`; the tiled version holds one `[B, H, b_q, b_k]` tile
at a time plus the `[B, H, T, d]` output.

**The measurement.** One forward pass (under `torch.no_grad()`) of one GPT-2-small-sized attention
core, $B = 1$, $H = 12$, $d = 64$, float32, for growing $T$. `peak_memory_fn` (from this chapter's
`bench_attention.py`) reports the peak bytes allocated during the call above what existed before:
on a CPU from `torch.profiler`'s record of every allocation, on a GPU from
`torch.cuda.max_memory_allocated`. The inputs themselves are allocated before, so they are not
counted.
""")
code("""
def materialised(q, k, v):
    \"\"\"Chapter 3's hand-written causal attention: scores and weights [B, H, T, T] are stored.\"\"\"
    T = q.size(2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v

mem_device = DEVICE if DEVICE.type in ("cpu", "cuda") else torch.device("cpu")
mem_lens = pick(smoke=[128, 256], cpu=[256, 512, 1024, 2048], gpu=[512, 1024, 2048, 4096, 8192])
cores = {"materialised T x T": materialised,
         "tiled (flash_attention, 128 x 128)": lambda q, k, v: flash_attention(q, k, v, block_q=128, block_k=128),
         "SDPA (fused)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
mem = {name: [] for name in cores}
for T in mem_lens:
    q, k, v = torch.randn(3, 1, 12, T, 64, device=mem_device).unbind(0)
    for name, fn in cores.items():
        with torch.no_grad():
            mem[name].append(peak_memory_fn(lambda: fn(q, k, v), mem_device) / 2**20)
print(f"peak MiB of one forward, B=1, H=12, d=64, float32, {mem_device.type}")
print("T      " + "".join(f"{name:>36s}" for name in cores) + "   one [1, 12, T, T] matrix")
for i, T in enumerate(mem_lens):
    print(f"{T:<7d}" + "".join(f"{mem[name][i]:36.1f}" for name in cores) + f"{12 * T * T * 4 / 2**20:20.1f}")
""")
code("""
fig, ax = plt.subplots(figsize=(6.5, 4))
for (name, vals), style in zip(mem.items(), ("o-", "s-", "^-")):
    ax.loglog(mem_lens, vals, style, label=name)
ax.loglog(mem_lens, [12 * T * T * 4 / 2**20 for T in mem_lens], "k:", label="one [1, 12, T, T] float32 matrix")
ax.set(title="Peak memory of one attention forward", xlabel="sequence length T", ylabel="MiB above the inputs")
ax.legend(fontsize=8); ax.grid(alpha=0.3, which="both"); plt.tight_layout(); plt.show()
""")
md(r"""
MEMORY_PROSE
""")

# ---------------------------------------------------------------- 4 HBM arithmetic
md(r"""
## 4. Why it is fast on a GPU: counting HBM bytes

On a CPU our tiled loop is *slower* than SDPA (Python overhead per tile; see the benchmark at the
end). On a GPU the fused kernel is much faster than materialised attention, and the reason is
memory traffic, which we can work out on paper.

A GPU has a large, slow-ish **HBM** (tens of GB at about 1.5–3 TB/s) and a tiny, fast on-chip
**SRAM** (shared memory: about 192 KB per streaming multiprocessor on an A100, 228 KB on an H100,
roughly 10× the bandwidth). Matrix multiplies run at hundreds of TFLOP/s, so the ratio
*FLOPs per HBM byte* (arithmetic intensity) decides whether a kernel waits on memory. An A100
needs about $312 \text{ TFLOP/s} / 1.56 \text{ TB/s} \approx 200$ FLOPs per byte to be compute-bound.

**Standard attention** (Dao et al. 2022, algorithm 0) per head, in fp16 (2 bytes): read $Q, K$
($2Td$), write $S$ ($T^2$), read $S$ and write $P = \operatorname{softmax}(S)$ ($2T^2$), read $P$ and $V$
($T^2 + Td$), write $O$ ($Td$): $4T^2 + 4Td$ elements. The $T^2$ terms dominate; a `[T, T]` tile
cannot stay on chip because at $T = 1024$ it is already 2 MiB, ten times an SM's SRAM.

**FlashAttention** (FlashAttention-2 loop order) reads each query block once, writes each output
block once, and reads all of $K$ and $V$ once *per query block*: $2Td + 2Td \cdot T / b_q$ elements,
where the block is as large as SRAM allows: a $Q$ block, a $K$ and a $V$ block and the score tile,
$b(3d + b)$ fp16 numbers, must fit in $M$ bytes. With $M = 100$ KB usable and $d = 64$, $b = 128$.
The FLOPs are the same for both: $4T^2 d$ ($QK^\top$ and $PV$).
""")
code("""
d, bytes_per, M = 64, 2, 100 * 1024                     # head size, fp16, usable SRAM per SM (bytes)
b = max(x for x in (16, 32, 64, 128, 256) if x * (3 * d + x) * bytes_per <= M)   # largest tile that fits
hbm_bw, peak = 1.555e12, 312e12                         # A100 40GB: HBM bytes/s, fp16 tensor-core FLOP/s
print(f"tile b = {b} (needs {b * (3 * d + b) * bytes_per / 1024:.0f} KB of SRAM), per head, fp16, d = {d}")
print(f"{'T':>6} {'S = [T,T] MiB':>14} {'standard MiB':>13} {'flash MiB':>10} {'ratio':>6} "
      f"{'FLOP/B std':>10} {'FLOP/B flash':>12} {'std us @HBM':>11} {'flash us @HBM':>13} {'matmul us':>9}")
for T in (1024, 2048, 4096, 8192, 16384):
    std = (4 * T * T + 4 * T * d) * bytes_per
    flash = (2 * T * d + 2 * T * d * math.ceil(T / b)) * bytes_per
    flops = 4 * T * T * d
    print(f"{T:6d} {T * T * bytes_per / 2**20:14.1f} {std / 2**20:13.1f} {flash / 2**20:10.1f} {std / flash:6.1f} "
          f"{flops / std:10.0f} {flops / flash:12.0f} {1e6 * std / hbm_bw:11.0f} {1e6 * flash / hbm_bw:13.0f} "
          f"{1e6 * flops / peak:9.0f}")
""")
md(r"""
Read the table row by row. At every length the score matrix of *one head* (2 MiB at
$T = 1024$, 512 MiB at 16k) is far larger than an SM's SRAM, so standard attention must send it
through HBM. It moves about **4× more bytes** than the tiled kernel (the ratio tends to
$2b/d = 4$ here, and grows with a larger SRAM tile), and its arithmetic intensity stays near
$d/2 = 32$ FLOPs per byte at every $T$, far below the ~200 an A100 needs: it is
**memory-bound**, and at $T = 16{,}384$ its HBM traffic alone takes about 1.4 ms per head against
0.2 ms of tensor-core matrix multiplies. The tiled kernel does the same FLOPs at about 127 FLOPs
per byte, close to the balance point, so its time is set mostly by the matmuls (0.35 ms of
traffic against 0.2 ms of compute per head at 16k). The memory saving (no `[T, T]` in HBM at all)
is what makes long contexts fit; the byte saving is what makes them fast.

(This is arithmetic from published specifications, not a GPU measurement; the real kernels also
fuse the mask, dropout and scaling, which standard attention pays for with further $T^2$ passes,
and in training the standard backward re-reads the stored $P$.)

## 5. The backward pass: recompute, don't store

**Why.** Training needs $\partial L/\partial Q, \partial L/\partial K, \partial L/\partial V$. Autograd on the
materialised version saves $P$ (`[B, H, T, T]`) for the backward pass, which is the memory we just
got rid of. FlashAttention saves only $O$ and the logsumexp $L_i$ (one number per row) and
**recomputes** each tile of $P$ in the backward pass. Recomputing is cheap (FLOPs are plentiful,
HBM bytes are not) and exact: $P_{ij} = \exp(S_{ij} - L_i)$ needs no running max, because $L_i$ is
already the final normaliser.

**The maths** (Dao et al. 2022, appendix B.2). With $dO$ the incoming gradient,
$dV = P^\top dO$, $dP = dO\, V^\top$, and the softmax Jacobian gives
$dS_{ij} = P_{ij}\,(dP_{ij} - D_i)$ with $D_i = \sum_j P_{ij} dP_{ij} = dO_i \cdot O_i$, a row sum of two
`[T, d]` tensors, so again nothing $T \times T$. Then $dQ = dS\,K / \sqrt{d}$ and $dK = dS^\top Q / \sqrt{d}$.
Every one of these is a sum over tiles:
""")
code("# shared: shared.efficient_attention.flash_attention_backward")
code("# shared: shared.efficient_attention.FlashAttentionFunction")
md(r"""
**Check.** The gradients against SDPA's own backward, on a ragged length, causal and not, and
with a sliding window; then the peak memory of one forward + backward.
""")
code("""
worst = 0.0
for causal, window, T in ((True, None, 150), (False, None, 97), (True, 24, 150)):
    q, k, v = (t.requires_grad_() for t in torch.randn(3, 2, 3, T, 32).unbind(0))
    grad_out = torch.randn(2, 3, T, 32)
    mask = sliding_window_mask(T, window) if window else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    grads = torch.autograd.grad(flash_attention(q, k, v, causal, 64, 32, window=window), (q, k, v), grad_out)
    worst = max(worst, max((a - b).abs().max().item() for a, b in zip(grads, ref_grads)))
print(f"largest gradient difference from SDPA (dq, dk, dv): {worst:.1e}")
assert worst < 1e-5

T_train = pick(smoke=256, cpu=512, gpu=4096)
q, k, v = (t.requires_grad_() for t in torch.randn(3, 1, 12, T_train, 64, device=mem_device).unbind(0))
def fwd_bwd(fn):
    q.grad = k.grad = v.grad = None
    fn(q, k, v).sum().backward()
print(f"peak MiB of one forward + backward at T = {T_train} (includes the three [1, 12, T, 64] gradients, "
      f"{3 * 12 * T_train * 64 * 4 / 2**20:.1f} MiB):")
for name, fn in cores.items():
    print(f"  {name:36s} {peak_memory_fn(lambda: fwd_bwd(fn), mem_device) / 2**20:8.1f}")
""")
md(r"""
BACKWARD_PROSE

## 6. Sliding-window attention

**Why.** Even with FlashAttention the *work* is $O(T^2)$, and at decode time the KV cache grows
with every token. Mistral 7B (Jiang et al. 2023) and Gemma 2/3 (alternating with global layers)
let each token attend only to the last $w$ tokens: a band of width $w$ below the diagonal.

**The maths.** Query $i$ sees keys $i - w < j \le i$, at most $w$ of them: $O(T \cdot w)$ work
and, at decode time, only the last $w$ keys and values are ever needed, so the **KV cache is
bounded by $w$** (Mistral keeps it in a rolling buffer). Information still travels further than
$w$ through depth: after $L$ layers a token can depend on tokens up to $L(w - 1)$ back.
""")
code("# shared: shared.efficient_attention.sliding_window_mask")
code("""
T_demo, w_demo = 24, 6
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
axes[0].imshow(torch.ones(T_demo, T_demo).tril(), cmap="Greys", vmin=0, vmax=1.3)
axes[0].set(title=f"causal: {T_demo * (T_demo + 1) // 2} allowed pairs", xlabel="key j", ylabel="query i")
axes[1].imshow(sliding_window_mask(T_demo, w_demo), cmap="Greys", vmin=0, vmax=1.3)
axes[1].set(title=f"sliding window w = {w_demo}: {int(sliding_window_mask(T_demo, w_demo).sum())} allowed pairs",
            xlabel="key j", ylabel="query i")
plt.tight_layout(); plt.show()
""")
md(r"""
**The KV cache bounded to $w$.** At decode step $t$ the new query needs only the last $w$ keys and
values. Below, a rolling buffer of $w$ slots (slot $t \bmod w$ is overwritten) gives exactly the
rows of full windowed attention. `flash_attention(..., window=w)` computes the same thing in
$O(T \cdot w)$ by skipping the tiles outside the band (section 2); it is tested against SDPA with
this mask.
""")
code("""
T, w = 40, 8
q, k, v = torch.randn(3, 1, 2, T, 16).unbind(0)
full = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(T, w))   # all rows at once
k_buf, v_buf = torch.zeros(1, 2, w, 16), torch.zeros(1, 2, w, 16)                    # the whole KV cache
worst = 0.0
for t in range(T):
    k_buf[:, :, t % w], v_buf[:, :, t % w] = k[:, :, t], v[:, :, t]                   # overwrite the oldest
    n = min(t + 1, w)                       # slots filled so far; order does not matter to attention
    row = F.scaled_dot_product_attention(q[:, :, t:t + 1], k_buf[:, :, :n], v_buf[:, :, :n])
    worst = max(worst, (row[:, :, 0] - full[:, :, t]).abs().max().item())
print(f"decoding {T} tokens with a {w}-slot rolling KV cache: max difference {worst:.1e}")
assert worst < 1e-6
print(f"and flash_attention(window={w}):", f"{(flash_attention(q, k, v, block_q=16, block_k=16, window=w) - full).abs().max():.1e}")

# KV-cache bytes of a Mistral-7B-shaped model (32 layers, 8 KV heads of 128, fp16) at 32k tokens
per_token = 2 * 32 * 8 * 128 * 2
print(f"KV cache per token {per_token / 2**10:.0f} KiB; at 32,768 tokens: full {per_token * 32768 / 2**30:.1f} GiB, "
      f"window 4,096: {per_token * 4096 / 2**30:.1f} GiB")
""")
md(r"""
**Quality against window size.** Does a small window hurt? We train the same tiny character-level
GPT (`shared.model.GPTModel`: 2 layers, $d_{model} = 64$, 4 heads, context 128) with the causal mask
replaced by a window $w \in \{16, 32, 64\}$ and with full causal attention, on the training plays,
then measure **bits per byte** on held-out plays (`shared.data`'s validation split). The
attention module is the course's `MultiHeadAttention` with its core swapped; the training loop is
`shared.train.train`. The same initial weights and batches for every variant, and the same
validation windows, so the comparison is paired: the interval is over validation windows. The
default CPU profile trains one seed per variant (the GPU profile three) to stay within a few
minutes. Section 8 adds linear attention to the same table.

Training uses SDPA with the boolean window mask (fast on a CPU); `flash_attention(window=w)` gives
the same numbers (tested).
""")
code("""
from shared.data import load_shakespeare, sample_windows
from shared.model import GPTConfig, GPTModel
from shared.train import TrainConfig, bits_per_byte, configure_optimizer, train

train_text, val_text = load_shakespeare("train"), load_shakespeare("val")
chars = sorted(set(train_text) | set(val_text))                 # a character-level vocabulary
stoi = {c: i for i, c in enumerate(chars)}
train_ids = np.array([stoi[c] for c in train_text], dtype=np.int64)
val_ids = np.array([stoi[c] for c in val_text], dtype=np.int64)
print(f"{len(chars)} characters; train {len(train_ids):,} / validation {len(val_ids):,} characters "
      f"(validation: {len(val_text.encode('utf-8')):,} UTF-8 bytes)")


class VariantAttention(MultiHeadAttention):
    \"\"\"The course's attention layer with a swappable core: 'softmax' (optionally windowed) or 'linear'.\"\"\"

    def __init__(self, *args, core="softmax", window=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.core, self.window = core, window

    def forward(self, x, attn_mask=None, kv_cache=None, layer_idx=0):      # x: [B, T, C]
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)   # [B, H, T, hd]
                   for t in self.qkv(x).split(self.d_out, dim=2))
        if self.core == "linear":
            out = linear_attention(q, k, v, causal=True, form="chunked")
        elif self.window is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(T, self.window, x.device))
        return self.out_proj(out.transpose(1, 2).reshape(B, T, self.d_out))


CONTEXT = 128
def make_model(core="softmax", window=None, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=len(chars), context_length=CONTEXT, d_model=pick(smoke=32, cpu=64, gpu=128),
                    n_heads=4, n_layers=pick(smoke=1, cpu=2, gpu=4))
    model = GPTModel(cfg)
    for block in model.blocks:   # same initial weights as the plain model, new core
        new = VariantAttention(cfg.d_model, cfg.d_model, CONTEXT, cfg.n_heads, core=core, window=window)
        new.load_state_dict(block.attn.state_dict())
        block.attn = new
    return model.to(DEVICE)


# Fixed validation windows: non-overlapping [CONTEXT + 1] slices of the held-out plays.
n_val = pick(smoke=8, cpu=128, gpu=400)
starts = np.linspace(0, len(val_ids) - CONTEXT - 2, n_val).astype(int)
val_x = torch.from_numpy(np.stack([val_ids[s:s + CONTEXT] for s in starts])).to(DEVICE)
val_y = torch.from_numpy(np.stack([val_ids[s + 1:s + CONTEXT + 1] for s in starts])).to(DEVICE)
val_bytes = sum(len("".join(chars[i] for i in row).encode("utf-8")) for row in val_y.tolist())

@torch.no_grad()
def window_bpb(model):
    \"\"\"Bits per byte of every validation window, [n_val] (same windows for every model).\"\"\"
    model.eval()
    losses = torch.cat([F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1)
                        for x, y in zip(val_x.split(32), val_y.split(32))])
    n_bytes_per_window = val_bytes / n_val   # characters are almost all ASCII: ~1 byte each
    return losses.cpu() * CONTEXT / (n_bytes_per_window * math.log(2))

STEPS = pick(smoke=3, cpu=200, gpu=2000)
SEEDS = pick(smoke=[0], cpu=[0], gpu=[0, 1, 2])
def train_variant(core="softmax", window=None, seed=0):
    model = make_model(core, window, seed)
    gen = torch.Generator().manual_seed(1000 + seed)          # the same batches for every variant
    cfg = TrainConfig(max_steps=STEPS, max_lr=3e-3, warmup_steps=max(1, STEPS // 10), eval_interval=0)
    t0 = time.process_time()
    train(model, configure_optimizer(model, lr=3e-3),
          lambda: sample_windows(train_ids, 32, CONTEXT, generator=gen), cfg)
    return model, window_bpb(model), time.process_time() - t0

results, models = {}, {}
for name, core, window in (("full causal", "softmax", None), ("window 64", "softmax", 64),
                           ("window 32", "softmax", 32), ("window 16", "softmax", 16)):
    runs = [train_variant(core, window, seed) for seed in SEEDS]
    models[name] = runs[0][0]
    results[name] = torch.stack([r[1] for r in runs])           # [seeds, n_val]
    print(f"{name:12s} bits/byte per seed: " + ", ".join(f"{r[1].mean():.3f}" for r in runs)
          + f"   (CPU s per run: {np.mean([r[2] for r in runs]):.0f})")
print(f"{STEPS} steps x 32 windows x {CONTEXT} characters per run; {n_val} validation windows")
""")
code("""
def paired_table(results, baseline="full causal"):
    \"\"\"Mean bpb over seeds and windows, and the paired difference to the baseline with a 95% interval.\"\"\"
    base = results[baseline].mean(0)                             # [n_val], averaged over seeds
    print(f"{'variant':14s} {'bits/byte':>10s} {'seed range':>14s} {'minus ' + baseline:>22s}")
    for name, r in results.items():
        diff = r.mean(0) - base
        half = 1.96 * diff.std() / math.sqrt(len(diff)) if name != baseline else 0.0
        seeds = r.mean(1)
        print(f"{name:14s} {r.mean():10.3f} {f'{seeds.min():.3f}-{seeds.max():.3f}':>14s} "
              f"{diff.mean():+14.3f} ± {half:.3f}")

paired_table(results)
""")
md(r"""
WINDOW_PROSE

**Attention sinks.** Windows trained in are one thing; a model *trained with full attention* and
then run with a sliding window at inference (to bound its cache) is another. Xiao et al.,
"Efficient Streaming Language Models with Attention Sinks" (2023), found that such models park a
lot of attention mass on the first few tokens (a "sink" for heads that have nothing to attend
to); once the window slides past them, quality collapses. Keeping the first few tokens in the
cache next to the window ("StreamingLLM") fixes most of it. Our tiny model can show the effect:
evaluate the full-attention model with a window of 16, with and without the first 4 positions
kept visible.
""")
code("""
def with_mask(model, mask):
    \"\"\"Evaluate a trained full-attention model with a different [T, T] mask (no retraining).\"\"\"
    for block in model.blocks:
        block.attn.core, block.attn.window, block.attn.fixed_mask = "softmax", None, mask
    return model

class MaskedVariant(VariantAttention):
    def forward(self, x, attn_mask=None, kv_cache=None, layer_idx=0):
        if getattr(self, "fixed_mask", None) is None:
            return super().forward(x, attn_mask, kv_cache, layer_idx)
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in self.qkv(x).split(self.d_out, dim=2))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.fixed_mask[:T, :T].to(x.device))
        return self.out_proj(out.transpose(1, 2).reshape(B, T, self.d_out))

full_model = models["full causal"]
for block in full_model.blocks:
    block.attn.__class__ = MaskedVariant     # same weights, a forward that honours a fixed mask
n_sink, w_eval = 4, 16
window_only = sliding_window_mask(CONTEXT, w_eval)
with_sinks = window_only | (torch.arange(CONTEXT)[None, :] < n_sink) & torch.ones(CONTEXT, CONTEXT, dtype=torch.bool).tril()
base = window_bpb(with_mask(full_model, None)).mean().item()
only = window_bpb(with_mask(full_model, window_only)).mean().item()
sink = window_bpb(with_mask(full_model, with_sinks)).mean().item()
print(f"full-attention model, seed 0, evaluated with: full causal {base:.3f} bits/byte; window {w_eval} {only:.3f}; "
      f"window {w_eval} + {n_sink} sink tokens {sink:.3f}")
print(f"(the model trained with window 16, seed 0: {results['window 16'][0].mean():.3f})")
""")
md(r"""
SINK_PROSE

## 7. Sparse attention: local + strided (Child et al. 2019)

**Why.** A window forgets everything older than $w$. Sparse Transformers keep a sparse set of
long-range connections too. Their "strided" pattern (section 4.2, fig. 3b) is the union of

* a **local** part: the last $l$ tokens ($i - l < j \le i$), and
* a **strided** part: every $l$-th token back ($(i - j) \bmod l = 0$).

With $l \approx \sqrt{T}$ each query sees about $2\sqrt{T}$ keys, so the cost is $O(T\sqrt{T})$, and
any earlier token is reachable in two hops (strided to the right column, then local), which a
two-layer model can use. (The paper also has a "fixed" pattern, with summary columns, for text.)
""")
code("# shared: shared.efficient_attention.strided_sparse_mask")
code("""
T_demo, l = 48, 6
local, strided = sliding_window_mask(T_demo, l), strided_sparse_mask(T_demo, 1, l)
union = strided_sparse_mask(T_demo, l, l)
assert torch.equal(union, local | strided)
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
for ax, (title, m) in zip(axes, ((f"local (last {l})", local), (f"strided (every {l}-th back)", strided),
                                 ("local + strided", union))):
    ax.imshow(m, cmap="Greys", vmin=0, vmax=1.3)
    ax.set(title=f"{title}: {int(m.sum())} pairs", xlabel="key j", ylabel="query i")
fig.suptitle(f"Child et al. (2019) strided sparse attention, T = {T_demo}, l = {l} "
             f"(causal has {T_demo * (T_demo + 1) // 2} pairs)")
plt.tight_layout(); plt.show()

two_hops = (union.float() @ union.float()) > 0
print("every earlier token reachable in two hops:", torch.equal(two_hops, torch.ones(T_demo, T_demo, dtype=torch.bool).tril()))
""")
md(r"""
**FLOPs saved.** Attention's $QK^\top$ and $PV$ cost $4 d$ FLOPs per allowed (query, key) pair. With
$l = \lceil\sqrt{T}\,\rceil$, counting the pairs of each mask:
""")
code("""
d = 64
print(f"{'T':>6} {'l':>4} {'causal pairs':>14} {'strided pairs':>14} {'fraction':>9} {'GFLOPs causal':>14} {'GFLOPs sparse':>14} (per head)")
for T in (1024, 2048, 4096, 8192, 16384):
    l = math.ceil(math.sqrt(T))
    causal_pairs = T * (T + 1) // 2
    sparse_pairs = int(strided_sparse_mask(T, l, l).sum()) if T <= 4096 else None
    if sparse_pairs is None:   # count without building a [T, T] mask: local pairs + strided pairs beyond the window
        i = np.arange(T)
        sparse_pairs = int(np.minimum(i + 1, l).sum() + np.maximum(0, (i - l) // l + 1).sum())
    print(f"{T:6d} {l:4d} {causal_pairs:14,d} {sparse_pairs:14,d} {sparse_pairs / causal_pairs:9.3f} "
          f"{4 * d * causal_pairs / 1e9:14.2f} {4 * d * sparse_pairs / 1e9:14.2f}")
""")
md(r"""
The fraction of pairs kept falls like $2/\sqrt{T}$: 9% of the causal pairs at $T = 1024$, 2.3% at
16,384 (0.8 GFLOPs per head instead of 34). The catch, then and now, is that a sparse mask saves
FLOPs only if the kernel skips the masked work: SDPA with a boolean mask still computes every
score. Block-sparse kernels (the Sparse Transformer's own, or FlexAttention's `block_mask` below)
skip whole tiles, which is exactly the tile skipping of section 2.

## 8. Linear attention (Katharopoulos et al. 2020)

**Why.** Windows and sparsity drop pairs; linear attention changes the similarity function so
that the $T \times T$ matrix never needs to exist at all, even mathematically.

**The maths.** Softmax attention is $o_i = \sum_j \operatorname{sim}(q_i, k_j) v_j / \sum_j \operatorname{sim}(q_i, k_j)$
with $\operatorname{sim}(q, k) = \exp(q \cdot k / \sqrt{d})$. Replace the similarity by a dot product of
positive features, $\operatorname{sim}(q, k) = \phi(q) \cdot \phi(k)$ with $\phi(x) = \operatorname{elu}(x) + 1$. Then
matrix products can be re-associated:

$$o_i = \frac{\phi(q_i)^\top \sum_{j \le i} \phi(k_j) v_j^\top}{\phi(q_i)^\top \sum_{j \le i} \phi(k_j)}
      = \frac{\phi(q_i)^\top S_i}{\phi(q_i)^\top z_i}, \qquad S_i = S_{i-1} + \phi(k_i) v_i^\top,\quad z_i = z_{i-1} + \phi(k_i).$$

The **parallel form** computes $A = \phi(Q)\phi(K)^\top$ with a causal mask ($O(T^2)$, like softmax);
the **recurrent form** carries the state $S_i$ (`[d, d_v]`) and $z_i$ (`[d]`) from token to token:
an RNN with $O(T)$ time and a constant-size state, which replaces the KV cache at decode time.
The **chunked form** does the parallel form inside chunks of 64 and the recurrence between
chunks, which keeps $O(T)$ but runs as matrix products.
""")
code("# shared: shared.efficient_attention.linear_attention")
code("""
q, k, v = torch.randn(3, 2, 3, 200, 16, dtype=torch.float64).unbind(0)     # float64: exact comparison
forms = {form: linear_attention(q, k, v, form=form, chunk_size=32) for form in ("parallel", "recurrent", "chunked")}
for form in ("recurrent", "chunked"):
    print(f"max |{form} - parallel| = {(forms[form] - forms['parallel']).abs().max():.1e}")
    assert (forms[form] - forms["parallel"]).abs().max() < 1e-10
""")
md(r"""
The three forms agree to float64 rounding. Now time and memory against $T$, one forward of
`[1, 12, T, 64]` tensors: the chunked linear form against the parallel form and SDPA.
""")
code("""
lin_lens = pick(smoke=[128, 256], cpu=[512, 1024, 2048, 4096], gpu=[1024, 2048, 4096, 8192, 16384])
lin_cores = {"linear, chunked": lambda q, k, v: linear_attention(q, k, v, form="chunked", chunk_size=64),
             "linear, parallel": lambda q, k, v: linear_attention(q, k, v, form="parallel"),
             "softmax, SDPA": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
lin_ms, lin_mib = {n: [] for n in lin_cores}, {n: [] for n in lin_cores}
for T in lin_lens:
    q, k, v = torch.randn(3, 1, 12, T, 64, device=mem_device).unbind(0)
    for name, fn in lin_cores.items():
        if name == "linear, parallel" and T > 4096:   # its [1, 12, T, T] matrices: 3 GiB each at T = 8192
            lin_ms[name].append(float("nan")); lin_mib[name].append(float("nan"))
            continue
        with torch.no_grad():
            fn(q, k, v)                                   # warm-up
            times = []
            for _ in range(pick(smoke=1, cpu=2, gpu=5)):
                t0 = time.perf_counter(); fn(q, k, v)
                if mem_device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            lin_ms[name].append(1000 * min(times))
            lin_mib[name].append(peak_memory_fn(lambda: fn(q, k, v), mem_device) / 2**20)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for (name, vals), style in zip(lin_ms.items(), ("o-", "s-", "^-")):
    axes[0].loglog(lin_lens, vals, style, label=name)
    axes[1].loglog(lin_lens, lin_mib[name], style, label=name)
for ax, ylabel, title in ((axes[0], "ms (best of runs)", "Time of one forward"),
                          (axes[1], "peak MiB above the inputs", "Peak memory of one forward")):
    ax.loglog(lin_lens, [ax.get_lines()[0].get_ydata()[0] * T / lin_lens[0] for T in lin_lens], "k:", label="∝ T")
    ax.set(title=f"{title}, [1, 12, T, 64], {mem_device.type}", xlabel="sequence length T", ylabel=ylabel)
    ax.legend(fontsize=8); ax.grid(alpha=0.3, which="both")
plt.tight_layout(); plt.show()
for i, T in enumerate(lin_lens):
    print(f"T={T:5d}  " + "  ".join(f"{n}: {lin_ms[n][i]:7.1f} ms {lin_mib[n][i]:7.1f} MiB" for n in lin_cores))
""")
md(r"""
LINEAR_SPEED_PROSE

**The quality gap, measured.** The same tiny model as in section 6, with the linear core, the
same seeds, batches and validation windows:
""")
code("""
runs = [train_variant("linear", None, seed) for seed in SEEDS]
results["linear (elu+1)"] = torch.stack([r[1] for r in runs])
print("linear bits/byte per seed: " + ", ".join(f"{r[1].mean():.3f}" for r in runs))
paired_table(results)

fig, ax = plt.subplots(figsize=(7, 3.8))
names = list(results)
ax.bar(range(len(names)), [results[n].mean().item() for n in names], color="tab:blue", alpha=0.7)
for i, n in enumerate(names):
    ax.plot([i] * len(SEEDS), results[n].mean(1).numpy(), "k.", ms=8)
ax.set_xticks(range(len(names)), names, rotation=15)
lo = min(results[n].mean(1).min().item() for n in names)
ax.set(ylim=(lo - 0.15, None), ylabel="validation bits per byte (lower is better)",
       title=f"Tiny character GPT, {STEPS} steps: attention variants (dots = seeds)")
plt.tight_layout(); plt.show()
""")
md(r"""
LINEAR_QUALITY_PROSE

## 9. GQA and MQA from the decode side

**Why.** At decode time each new token reads the whole KV cache of every layer: for long contexts
the cache, not the weights, dominates memory and memory traffic. **Multi-query attention**
(Shazeer 2019) shares one key/value head among all query heads; **grouped-query attention**
(Ainslie et al. 2023) shares each of $n_{kv}$ key/value heads among a group of $H / n_{kv}$ query
heads. The cache shrinks by $H / n_{kv}$. (The architecture itself, in a Llama-style model, is
built in Chapter 4's modern-LLM notebook.)

**The arithmetic.** KV cache bytes $= 2 \times n_{layers} \times n_{kv} \times d_{head} \times T \times$ bytes per number.
For SmolLM2-135M's shape (30 layers, 9 query heads of 64, 3 KV heads) in bf16:
""")
code("""
n_layers, H, hd = 30, 9, 64
print(f"{'tokens':>8} " + "".join(f"{name:>18s}" for name in ("MHA (9 KV heads)", "GQA (3)", "MQA (1)")))
for T in (2048, 8192, 32768):
    print(f"{T:8d} " + "".join(f"{2 * n_layers * n_kv * hd * T * 2 / 2**20:15.0f} MiB" for n_kv in (9, 3, 1)))
""")
md(r"""
**The measurement.** One decode step of attention for one layer: a single new query
(`[1, 9, 1, 64]`) against a cache of $L$ cached keys and values with 9, 3 or 1 KV heads.
`F.scaled_dot_product_attention(..., enable_gqa=True)` shares each KV head among its group of
query heads without copying it; first a check that this equals MHA with the KV heads repeated
(`repeat_interleave`). Then the attention-only decode rate for 30 such layers.
""")
code("""
L = pick(smoke=1024, cpu=16384, gpu=65536)
q1 = torch.randn(1, H, 1, hd, device=mem_device)
ref_k, ref_v = torch.randn(2, 1, 3, 100, hd, device=mem_device).unbind(0)
gqa = F.scaled_dot_product_attention(q1, ref_k, ref_v, enable_gqa=True)
mha = F.scaled_dot_product_attention(q1, ref_k.repeat_interleave(3, dim=1), ref_v.repeat_interleave(3, dim=1))
print(f"GQA (enable_gqa) vs MHA with repeated KV heads: {(gqa - mha).abs().max():.1e}")
assert torch.allclose(gqa, mha, atol=1e-6)

rates = {}
for n_kv in (9, 3, 1):
    k_cache, v_cache = torch.randn(2, 1, n_kv, L, hd, device=mem_device).unbind(0)
    step = lambda: F.scaled_dot_product_attention(q1, k_cache, v_cache, enable_gqa=n_kv != H)
    step()
    times = []
    for _ in range(pick(smoke=3, cpu=20, gpu=50)):
        t0 = time.perf_counter(); step()
        if mem_device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    rates[n_kv] = 1 / (n_layers * min(times))       # best of the runs: load from other processes only adds time
    print(f"n_kv = {n_kv}: cache {2 * n_kv * L * hd * 4 / 2**20:6.1f} MiB per layer (float32), "
          f"{1e6 * min(times):7.0f} us per layer-step -> {rates[n_kv]:7.1f} tokens/s for 30 layers (attention only)")
print(f"speed-up over MHA: GQA {rates[3] / rates[9]:.1f}x, MQA {rates[1] / rates[9]:.1f}x")
""")
md(r"""
**The whole model.** Attention is only part of a decode step: the weights are read too. The
course's Llama-style model, `shared.llama.LlamaModel`, in SmolLM2-135M's shape with random
weights (speed does not depend on the values), for 9, 3 and 1 KV heads; the KV cache is filled
with $L$ random positions, and each timed step decodes one token at position $L$ (the cache is
rewound after each step so every step sees the same $L$).
""")
code("""
from shared.llama import LlamaConfig, LlamaModel

L_model = pick(smoke=256, cpu=2048, gpu=8192)
decode = {}
for n_kv in (9, 3, 1):
    torch.manual_seed(0)
    cfg = LlamaConfig(n_kv_heads=n_kv, context_length=L_model + 8, n_layers=pick(smoke=2, cpu=30, gpu=30))  # SmolLM2-135M's shape
    model = LlamaModel(cfg).to(mem_device).eval()
    cache = model.new_kv_cache()
    with torch.no_grad():
        for layer in range(cfg.n_layers):     # fill the cache with L random keys/values per layer
            cache.update(layer, *torch.randn(2, 1, n_kv, L_model, cfg.head_dim, device=mem_device).unbind(0))
        cache.length = L_model
        token = torch.zeros(1, 1, dtype=torch.long, device=mem_device)
        times = []
        for _ in range(pick(smoke=2, cpu=3, gpu=20)):
            t0 = time.perf_counter()
            model(token, kv_cache=cache)
            if mem_device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cache.length = L_model                 # rewind: the next step decodes position L again
    decode[n_kv] = (1 / min(times), cache.bytes() / 2**20, model.num_parameters())
    del model, cache
print(f"LlamaModel, SmolLM2-135M shape ({decode[3][2] / 1e6:.0f}M parameters, float32), one token at context {L_model}:")
for n_kv, (tps, mib, _) in decode.items():
    print(f"  n_kv_heads = {n_kv}: KV cache {mib:7.1f} MiB, {tps:6.1f} tokens/s  ({tps / decode[9][0]:.2f}x MHA)")
""")
md(r"""
GQA_PROSE

## 10. The same masks in FlexAttention

PyTorch's `torch.nn.attention.flex_attention` lets you write a mask as a function
`mask_mod(b, h, q_idx, kv_idx) -> bool` (and a score change as `score_mod(score, b, h, q_idx, kv_idx)`);
`create_block_mask` turns it into a tile-level map, so that skipped tiles are never computed,
exactly the idea of section 2, and `torch.compile` generates a fused kernel from it. In this
version of PyTorch it also **runs on the CPU**: without `torch.compile` it uses an unfused
reference implementation (it materialises the scores and warns about it), which is enough to check
the masks. (Compiled, it builds a C++ kernel on the CPU or a Triton kernel on a GPU; compiling
takes about a minute here, so we do not do it.)
""")
code("""
import warnings
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

W, LOCAL, STRIDE, T = 32, 16, 16, 256
def sliding_window(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & (q_idx - kv_idx < W)
def local_strided(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & ((q_idx - kv_idx < LOCAL) | ((q_idx - kv_idx) % STRIDE == 0))

for name, mask_mod, hand in (("sliding window", sliding_window, sliding_window_mask(T, W)),
                             ("local + strided", local_strided, strided_sparse_mask(T, LOCAL, STRIDE))):
    dense = create_mask(mask_mod, None, None, T, T, device="cpu")[0, 0]        # [T, T] bool
    block_mask = create_block_mask(mask_mod, None, None, T, T, device="cpu")   # 128 x 128 tiles
    q, k, v = torch.randn(3, 1, 2, T, 16).unbind(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # "flex_attention called without torch.compile()"
        out = flex_attention(q, k, v, block_mask=block_mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=hand)
    print(f"{name:16s} mask == hand-built: {torch.equal(dense, hand)};  "
          f"flex_attention vs SDPA with the mask: {(out - ref).abs().max():.1e};  "
          f"tiles computed: {100 - block_mask.sparsity():.0f}%")
    assert torch.equal(dense, hand) and (out - ref).abs().max() < 1e-5

# score_mod: add a bias to each score, e.g. ALiBi's linear distance penalty (Press et al. 2022)
slope = 0.1
def alibi(score, b, h, q_idx, kv_idx):
    return score - slope * (q_idx - kv_idx)
causal_bm = create_block_mask(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx, None, None, T, T, device="cpu")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = flex_attention(q, k, v, score_mod=alibi, block_mask=causal_bm)
pos = torch.arange(T)
bias = (-slope * (pos[:, None] - pos[None, :]).float()).masked_fill(pos[None, :] > pos[:, None], float("-inf"))
print(f"ALiBi score_mod vs SDPA with the same additive bias: {(out - F.scaled_dot_product_attention(q, k, v, attn_mask=bias)).abs().max():.1e}")
""")
md(r"""
## 11. Summary and the benchmark

BENCH_PROSE

* The **online softmax** keeps a running max and sum, and rescales both (and the output) by
  $e^{m - m'}$ whenever the max grows; dividing once at the end gives exact attention.
* **FlashAttention** tiles queries and keys, never stores $T \times T$, skips the tiles above the
  diagonal, and saves only the logsumexp for a backward pass that **recomputes** each tile. It
  does the same FLOPs as standard attention but moves far fewer HBM bytes, which is why it is
  fast on a GPU (a Python loop on a CPU shows the memory, not the speed).
* **Sliding windows** make the work $O(T w)$ and bound the KV cache; trained-in windows cost
  little at this scale, while windows bolted onto a full-attention model need attention sinks.
* **Sparse** local + strided masks keep long-range paths at a fraction of the pairs.
* **Linear attention** is an RNN in disguise: $O(T)$ time and memory and a constant-size state,
  at a measurable cost in quality.
* **GQA/MQA** cut the KV cache, and the decode-time memory traffic, by $H / n_{kv}$.

**Next:** the exercise `exercise_flash.ipynb`, where you write the tiled online-softmax forward
pass yourself, checked against SDPA and `shared`.
""")
