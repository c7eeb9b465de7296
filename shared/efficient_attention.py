"""Efficient attention (Chapter 3b): FlashAttention's tiling, sliding windows, sparse masks, linear attention.

All functions work on per-head tensors ``q: [B, H, T_q, d]``, ``k: [B, H, T_k, d]``,
``v: [B, H, T_k, d_v]`` and return ``[B, H, T_q, d_v]``, like ``F.scaled_dot_product_attention``.

* :func:`flash_attention`: exact softmax attention computed tile by tile with an online
  softmax, never materialising the ``T_q x T_k`` scores (Milakov & Gimelshein, "Online
  normalizer calculation for softmax", 2018; Dao et al., "FlashAttention", 2022, algorithm 1
  for the forward, algorithm 2 / appendix B.2 for the backward with recomputation). Written in
  plain PyTorch to teach the algorithm: on a GPU the point is that each tile lives in SRAM,
  which a Python loop cannot control, so this is *not* faster than SDPA's fused kernel.
* :func:`sliding_window_mask` (Beltagy et al., "Longformer", 2020; Jiang et al., "Mistral 7B",
  2023) and :func:`strided_sparse_mask` (Child et al., "Generating Long Sequences with Sparse
  Transformers", 2019, section 4.2): boolean masks, ``True`` = may attend, as SDPA's
  ``attn_mask`` expects. ``flash_attention(..., window=w)`` computes sliding-window attention in
  ``O(T * w)`` by skipping the tiles outside the band.
* :func:`linear_attention`: Katharopoulos et al., "Transformers are RNNs" (2020), eq. 4-6 and
  9-12, feature map ``elu(x) + 1``; parallel (``O(T^2)``), recurrent (``O(T)``, an RNN) and
  chunked (``O(T)``, matmul-friendly) forms that give the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["flash_attention", "flash_attention_forward", "flash_attention_backward",
           "FlashAttentionFunction", "sliding_window_mask", "strided_sparse_mask",
           "linear_attention", "elu_feature_map"]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, T, d], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"mismatched shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "(need q [B, H, T_q, d], k [B, H, T_k, d], v [B, H, T_k, d_v])")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head size, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[2] == 0 or q.shape[2] == 0:
        raise ValueError(f"empty sequence: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} "
                         f"on {q.device}/{k.device}/{v.device}")


def _check_positive_int(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _key_range(i0: int, i1: int, T_k: int, offset: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Keys ``[lo, hi)`` that queries ``i0 .. i1-1`` (absolute positions ``offset + i``) may see."""
    hi = min(T_k, offset + i1) if causal else T_k            # causal: nothing right of the diagonal
    lo = max(0, offset + i0 - window + 1) if window else 0   # window: nothing left of the band
    return lo, hi


def _tile_mask(i0: int, i1: int, j0: int, j1: int, offset: int, causal: bool, window: int | None,
               device: torch.device) -> torch.Tensor | None:
    """Boolean ``[i1-i0, j1-j0]`` tile of the mask (True = may attend), or None if all True."""
    q_pos = offset + torch.arange(i0, i1, device=device)[:, None]
    k_pos = torch.arange(j0, j1, device=device)[None, :]
    needs = (causal and j1 - 1 > offset + i0) or (window is not None and j0 <= offset + i1 - 1 - window)
    if not needs:  # the whole tile is allowed: no masking work at all (most tiles when T >> block)
        return None
    allowed = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    return allowed


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                            block_q: int = 64, block_k: int = 64, scale: float | None = None,
                            window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention's forward pass (Dao et al. 2022, algorithm 1): ``(out, logsumexp)``.

    For each block of ``block_q`` queries, visit the key/value blocks one at a time and keep,
    per query row, the running maximum ``m`` of the scores seen so far, the running sum
    ``l = sum exp(s - m)`` and the running un-normalised output ``acc = sum exp(s - m) v``.
    When a new tile raises the maximum from ``m`` to ``m'``, the old ``l`` and ``acc`` are
    rescaled by ``exp(m - m')``; the division by ``l`` happens once, at the end.

    Shapes: ``q [B, H, T_q, d]``, ``k [B, H, T_k, d]``, ``v [B, H, T_k, d_v]`` ->
    ``out [B, H, T_q, d_v]`` (dtype of ``q``), ``logsumexp [B, H, T_q]`` (float32, or float64
    for float64 inputs): ``logsumexp_i = log sum_j exp(s_ij)``, what the backward pass needs.
    Memory: ``O(block_q * block_k)`` scores per (B, H) at a time instead of ``O(T_q * T_k)``.
    No input checks (see :func:`flash_attention`).
    """
    B, H, T_q, d = q.shape
    T_k, d_v = k.shape[2], v.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    offset = T_k - T_q                 # query i sits at absolute position offset + i (KV-cache style)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # accumulate in >= fp32
    out = torch.empty(B, H, T_q, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T_q, dtype=acc_dtype, device=q.device)
    for i0 in range(0, T_q, block_q):
        i1 = min(i0 + block_q, T_q)
        q_i = q[:, :, i0:i1].to(acc_dtype) * scale                              # [B, H, bq, d]
        m = torch.full((B, H, i1 - i0), -math.inf, dtype=acc_dtype, device=q.device)  # running max
        l = torch.zeros(B, H, i1 - i0, dtype=acc_dtype, device=q.device)        # running sum
        acc = torch.zeros(B, H, i1 - i0, d_v, dtype=acc_dtype, device=q.device)  # running output
        lo, hi = _key_range(i0, i1, T_k, offset, causal, window)
        for j0 in range(lo - lo % block_k, hi, block_k):   # tiles outside [lo, hi) are skipped
            j1 = min(j0 + block_k, hi)
            s = q_i @ k[:, :, j0:j1].to(acc_dtype).transpose(-2, -1)            # [B, H, bq, bk]
            allowed = _tile_mask(i0, i1, j0, j1, offset, causal, window, q.device)
            if allowed is not None:
                s = s.masked_fill(~allowed, -math.inf)
            m_new = torch.maximum(m, s.amax(dim=-1))                             # [B, H, bq]
            # A row whose keys are all masked so far has m_new = -inf: keep exp() finite (= 0).
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - m_safe[..., None])                                 # [B, H, bq, bk]
            alpha = torch.exp(m - m_safe)                # rescales what was accumulated before
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v[:, :, j0:j1].to(acc_dtype)
            m = m_new
        out[:, :, i0:i1] = (acc / l[..., None]).to(q.dtype)   # normalise once, at the end
        lse[:, :, i0:i1] = m + torch.log(l)
    return out, lse


def flash_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             out: torch.Tensor, lse: torch.Tensor, causal: bool = True,
                             block_q: int = 64, block_k: int = 64, scale: float | None = None,
                             window: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention's backward pass with recomputation (Dao et al. 2022, appendix B.2).

    Nothing ``T x T`` was saved by the forward: only ``out`` and ``lse`` (``[B, H, T_q]``). Each
    tile of probabilities is recomputed exactly as ``P_ij = exp(s_ij - lse_i)`` and used at once:

    ``dV_j += P_ij^T dO_i``,  ``dP_ij = dO_i V_j^T``,  ``dS_ij = P_ij * (dP_ij - D_i)`` with
    ``D_i = rowsum(dO_i * O_i)``,  ``dQ_i += scale * dS_ij K_j``,  ``dK_j += scale * dS_ij^T Q_i``.

    Returns ``(dq, dk, dv)`` with the shapes and dtypes of ``q, k, v``.
    """
    T_q, d = q.shape[2], q.shape[-1]
    T_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    offset = T_k - T_q
    acc_dtype = lse.dtype
    dq = torch.zeros_like(q, dtype=acc_dtype)
    dk = torch.zeros_like(k, dtype=acc_dtype)
    dv = torch.zeros_like(v, dtype=acc_dtype)
    D = (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(dim=-1)             # [B, H, T_q]
    for i0 in range(0, T_q, block_q):
        i1 = min(i0 + block_q, T_q)
        q_i, do_i = q[:, :, i0:i1].to(acc_dtype), grad_out[:, :, i0:i1].to(acc_dtype)
        lo, hi = _key_range(i0, i1, T_k, offset, causal, window)
        for j0 in range(lo - lo % block_k, hi, block_k):
            j1 = min(j0 + block_k, hi)
            k_j, v_j = k[:, :, j0:j1].to(acc_dtype), v[:, :, j0:j1].to(acc_dtype)
            s = scale * q_i @ k_j.transpose(-2, -1)                              # recomputed
            allowed = _tile_mask(i0, i1, j0, j1, offset, causal, window, q.device)
            if allowed is not None:
                s = s.masked_fill(~allowed, -math.inf)
            p = torch.exp(s - lse[:, :, i0:i1, None])                            # exact softmax tile
            dv[:, :, j0:j1] += p.transpose(-2, -1) @ do_i
            ds = p * (do_i @ v_j.transpose(-2, -1) - D[:, :, i0:i1, None])
            dq[:, :, i0:i1] += scale * ds @ k_j
            dk[:, :, j0:j1] += scale * ds.transpose(-2, -1) @ q_i
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves ``q, k, v, out, logsumexp`` (``O(T)`` extra), recomputes the tiles."""

    @staticmethod
    def forward(ctx, q, k, v, causal, block_q, block_k, scale, window):
        out, lse = flash_attention_forward(q, k, v, causal, block_q, block_k, scale, window)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, block_q, block_k, scale, window)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(grad_out, q, k, v, out, lse, *ctx.args)
        return dq, dk, dv, None, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    block_q: int = 64, block_k: int = 64, return_lse: bool = False,
                    scale: float | None = None, window: int | None = None):
    """Exact softmax attention, tiled with an online softmax (FlashAttention, in plain PyTorch).

    ``softmax(q k^T * scale + mask) v`` without ever holding the ``T_q x T_k`` scores: see
    :func:`flash_attention_forward` (forward, Dao et al. 2022 algorithm 1) and
    :func:`flash_attention_backward` (backward, recomputing each tile from the saved logsumexp).
    Differentiable through :class:`FlashAttentionFunction`.

    Args:
        q: ``[B, H, T_q, d]``; k: ``[B, H, T_k, d]``; v: ``[B, H, T_k, d_v]``.
        causal: query ``i`` sees keys ``j <= i + (T_k - T_q)``. For ``T_q == T_k`` this is
            SDPA's ``is_causal=True``; for ``T_q < T_k`` the queries are the *last* ``T_q``
            positions (a decode step after cached keys), as :func:`shared.attention.build_attention_mask`.
            Tiles entirely above the diagonal are skipped (about half the work).
        block_q, block_k: tile sizes (positive ints; any ``T`` works, the last tile is ragged).
        return_lse: also return ``logsumexp [B, H, T_q]`` (float32; float64 for float64 inputs).
        scale: score scale, default ``1 / sqrt(d)``.
        window: if given, sliding-window attention: query ``i`` also sees only keys
            ``j > i + (T_k - T_q) - window`` (itself and the ``window - 1`` before it when causal).
            Tiles outside the band are skipped, so the cost is ``O(T * window)``.

    Returns:
        ``out [B, H, T_q, d_v]`` in ``q``'s dtype, or ``(out, lse)`` with ``return_lse=True``.
        Cost: ``4 * B * H * T_q * T_k * d`` FLOPs (about half with ``causal``), ``O(B * H * T * d)``
        memory plus one ``block_q x block_k`` tile.

    Raises:
        TypeError/ValueError: for non-tensors, tensors that are not ``[B, H, T, d]`` floats,
            mismatched shapes/dtypes/devices, empty sequences, non-positive block sizes or
            window, or ``causal`` with ``T_q > T_k`` (a query would have no key).

    Example:
        >>> q = k = v = torch.randn(1, 2, 100, 16)
        >>> ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        >>> torch.allclose(flash_attention(q, k, v, block_q=32, block_k=48), ref, atol=1e-5)
        True
    """
    _check_qkv(q, k, v)
    _check_positive_int(block_q=block_q, block_k=block_k)
    if window is not None:
        _check_positive_int(window=window)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal attention needs T_q <= T_k, got T_q={q.shape[2]}, T_k={k.shape[2]}")
    out, lse = FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k, scale, window)
    return (out, lse) if return_lse else out


def sliding_window_mask(T: int, window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Causal sliding-window (banded) mask, boolean ``[T, T]``, True = may attend.

    Query ``i`` sees keys ``i - window + 1 .. i``: itself and the ``window - 1`` tokens before it
    (Mistral 7B's convention; Gemma alternates such layers with global ones). Each row has at
    most ``window`` True entries, so attention costs ``O(T * window)`` instead of ``O(T^2)``, and
    a decoder only needs the last ``window`` keys and values: the KV cache is bounded by
    ``window``. Information still travels further than ``window`` through the layers (``L``
    layers reach ``L * (window - 1)`` tokens back). ``window >= T`` is plain causal attention.

    Raises:
        ValueError: if ``T`` or ``window`` is not a positive int.

    Example:
        >>> sliding_window_mask(4, 2).int()
        tensor([[1, 0, 0, 0],
                [1, 1, 0, 0],
                [0, 1, 1, 0],
                [0, 0, 1, 1]], dtype=torch.int32)
    """
    _check_positive_int(T=T, window=window)
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (j > i - window)


def strided_sparse_mask(T: int, block: int, stride: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Causal "strided" sparse-attention mask of Child et al. (2019), boolean ``[T, T]``.

    The union of the paper's two heads (section 4.2, fig. 3b), here in one mask:

    * local: keys ``j`` with ``i - block < j <= i`` (the ``block`` most recent tokens, ``A^(1)``);
    * strided: keys ``j <= i`` with ``(i - j) % stride == 0`` (every ``stride``-th token back, ``A^(2)``).

    With ``block = stride = l ≈ sqrt(T)`` each query sees about ``2 sqrt(T)`` keys, so the cost
    is ``O(T sqrt(T))``, and any token reaches any earlier one in two hops (local then strided).

    Raises:
        ValueError: if ``T``, ``block`` or ``stride`` is not a positive int.

    Example:
        >>> strided_sparse_mask(6, 2, 3).int()[5]
        tensor([0, 0, 1, 0, 1, 1], dtype=torch.int32)
    """
    _check_positive_int(T=T, block=block, stride=stride)
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    causal = j <= i
    return causal & ((j > i - block) | ((i - j) % stride == 0))


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``phi(x) = elu(x) + 1``: positive features (Katharopoulos et al. 2020, eq. 7)."""
    return F.elu(x) + 1


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                     form: str = "chunked", chunk_size: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention with the ``elu + 1`` feature map (Katharopoulos et al. 2020).

    Softmax's similarity ``exp(q . k)`` is replaced by ``phi(q) . phi(k)``; then
    ``out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i)`` with ``S_i = sum_{j<=i} phi(k_j) v_j^T``
    ``[d, d_v]`` and ``z_i = sum_{j<=i} phi(k_j)`` ``[d]`` (eq. 9-12; sums over all ``j`` when
    not causal). There is no ``1/sqrt(d)`` scale (the paper has none). Three forms, same numbers:

    * ``"parallel"``: ``A = phi(Q) phi(K)^T`` masked to the lower triangle, ``(A V) / rowsum(A)``;
      ``O(T^2 d)`` time and ``O(T^2)`` memory, like softmax attention (eq. 5).
    * ``"recurrent"``: a Python loop over ``t`` carrying the state ``(S, z)``, an RNN;
      ``O(T d d_v)`` time, ``O(d d_v)`` state: what a decoder keeps instead of a KV cache.
    * ``"chunked"``: blocks of ``chunk_size`` positions, the parallel form inside a block and
      the state ``S, z`` across blocks (prefix sums of the blocks); ``O(T (chunk_size + d) d)``
      time, ``O(T d)`` memory, and matmul-shaped, so it is the fast one.

    Args:
        q, k: ``[B, H, T, d]``; v: ``[B, H, T, d_v]`` (same ``T``: self-attention).
        causal: mask the future (prefix sums) or not.
        form: ``"parallel"``, ``"recurrent"`` or ``"chunked"``.
        chunk_size: block length of the chunked form (positive int).
        eps: added to the denominator (it is positive, ``phi > 0``).

    Returns:
        ``[B, H, T, d_v]`` in ``q``'s dtype.

    Raises:
        TypeError/ValueError: for bad tensors or shapes (see :func:`flash_attention`), ``T_q != T_k``,
            an unknown ``form`` or a non-positive ``chunk_size``.
    """
    _check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"linear_attention is self-attention: T_q={q.shape[2]} must equal T_k={k.shape[2]}")
    if form not in ("parallel", "recurrent", "chunked"):
        raise ValueError(f"form must be 'parallel', 'recurrent' or 'chunked', got {form!r}")
    _check_positive_int(chunk_size=chunk_size)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)          # [B, H, T, d], all > 0
    if not causal:  # associativity: phi(Q) (phi(K)^T V), O(T d d_v), whatever the form
        S = phi_k.transpose(-2, -1) @ v                              # [B, H, d, d_v]
        z = phi_k.sum(dim=2)                                         # [B, H, d]
        return (phi_q @ S) / ((phi_q @ z[..., None]) + eps)
    if form == "parallel":
        T = q.shape[2]
        A = phi_q @ phi_k.transpose(-2, -1)                          # [B, H, T, T]
        A = A * torch.tril(torch.ones(T, T, dtype=A.dtype, device=A.device))
        return (A @ v) / (A.sum(dim=-1, keepdim=True) + eps)
    if form == "recurrent":
        B, H, T, d = q.shape
        S = q.new_zeros(B, H, d, v.shape[-1])                        # running sum of phi(k) v^T
        z = q.new_zeros(B, H, d)                                     # running sum of phi(k)
        outs = []
        for t in range(T):
            S = S + phi_k[:, :, t, :, None] * v[:, :, t, None, :]
            z = z + phi_k[:, :, t]
            num = (phi_q[:, :, t, None, :] @ S).squeeze(-2)          # [B, H, d_v]
            den = (phi_q[:, :, t] * z).sum(dim=-1, keepdim=True)     # [B, H, 1]
            outs.append(num / (den + eps))
        return torch.stack(outs, dim=2)
    # chunked
    B, H, T, d = q.shape
    S = q.new_zeros(B, H, d, v.shape[-1])
    z = q.new_zeros(B, H, d)
    outs = []
    for c0 in range(0, T, chunk_size):
        c1 = min(c0 + chunk_size, T)
        pq, pk, vc = phi_q[:, :, c0:c1], phi_k[:, :, c0:c1], v[:, :, c0:c1]
        A = (pq @ pk.transpose(-2, -1)) * torch.tril(torch.ones(c1 - c0, c1 - c0, dtype=q.dtype, device=q.device))
        num = pq @ S + A @ vc                                        # earlier chunks + this chunk
        den = pq @ z[..., None] + A.sum(dim=-1, keepdim=True)
        outs.append(num / (den + eps))
        S = S + pk.transpose(-2, -1) @ vc
        z = z + pk.sum(dim=2)
    return torch.cat(outs, dim=2)
