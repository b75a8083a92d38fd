"""The float64 reference semantics of the kernel contract, checked against independent scalar loops."""

from __future__ import annotations

import math

import pytest
import torch

from harness import ops


def loop_attention(q, k, v, *, causal, window, scale, kv_lens):
    """A deliberately plain per-element implementation, written apart from harness.ops."""
    B, Hq, Sq, D = q.shape
    Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, Hq, Sq, Dv, dtype=torch.float64)
    for b in range(B):
        L = Skv if kv_lens is None else int(kv_lens[b])
        for h in range(Hq):
            kh = h // (Hq // Hkv)
            for i in range(Sq):
                keys = [j for j in range(L) if not causal or j <= i + L - Sq]
                if window is not None:
                    keys = [j for j in keys if j > i + L - Sq - window]
                if not keys:
                    continue
                s = [float(q[b, h, i].double() @ k[b, kh, j].double()) * scale for j in keys]
                m = max(s)
                w = [math.exp(x - m) for x in s]
                total = sum(w)
                for wj, j in zip(w, keys, strict=True):
                    out[b, h, i] += wj / total * v[b, kh, j].double()
    return out


CASES = {
    "mha-full": dict(B=1, Hq=2, Hkv=2, Sq=5, Skv=5, D=4, Dv=4, causal=False, window=None, kv_lens=None, scale=None),
    "gqa-causal": dict(B=2, Hq=4, Hkv=2, Sq=6, Skv=6, D=4, Dv=4, causal=True, window=None, kv_lens=None, scale=None),
    "chunked-ragged": dict(
        B=2, Hq=4, Hkv=1, Sq=3, Skv=8, D=4, Dv=3, causal=True, window=None, kv_lens=[8, 5], scale=0.3
    ),
    "decode-empty-row": dict(
        B=3, Hq=2, Hkv=1, Sq=1, Skv=6, D=4, Dv=2, causal=True, window=None, kv_lens=[6, 0, 2], scale=None
    ),
    "window": dict(B=1, Hq=2, Hkv=1, Sq=7, Skv=7, D=4, Dv=4, causal=True, window=3, kv_lens=None, scale=None),
    "sq-gt-lens": dict(B=1, Hq=1, Hkv=1, Sq=4, Skv=6, D=4, Dv=4, causal=True, window=None, kv_lens=[2], scale=None),
    # The reference computes a window's scores band by band (blocks of rows, only the keys they can see):
    "window-bands": dict(B=2, Hq=2, Hkv=1, Sq=40, Skv=40, D=4, Dv=4, causal=True, window=3, kv_lens=None, scale=None),
    "window-chunk-ragged": dict(
        B=2, Hq=2, Hkv=2, Sq=20, Skv=50, D=4, Dv=3, causal=True, window=7, kv_lens=[50, 30], scale=None
    ),
    "window-empty-bands": dict(
        B=1, Hq=2, Hkv=1, Sq=33, Skv=40, D=4, Dv=4, causal=True, window=2, kv_lens=[5], scale=None
    ),
    "window-ragged-batch": dict(
        B=2, Hq=2, Hkv=1, Sq=33, Skv=40, D=4, Dv=4, causal=True, window=2, kv_lens=[40, 5], scale=None
    ),
    "window-wider-than-cache": dict(
        B=1, Hq=2, Hkv=1, Sq=18, Skv=18, D=4, Dv=4, causal=True, window=64, kv_lens=None, scale=None
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_attention_reference_matches_scalar_loops(name: str) -> None:
    c = CASES[name]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(c["B"], c["Hq"], c["Sq"], c["D"], generator=g)
    k = torch.randn(c["B"], c["Hkv"], c["Skv"], c["D"], generator=g)
    v = torch.randn(c["B"], c["Hkv"], c["Skv"], c["Dv"], generator=g)
    kv_lens = torch.tensor(c["kv_lens"]) if c["kv_lens"] is not None else None
    kw = dict(causal=c["causal"], window=c["window"], scale=c["scale"], kv_lens=kv_lens)
    got = ops.attention(q, k, v, **kw)
    assert got.dtype == torch.float64 and got.shape == (c["B"], c["Hq"], c["Sq"], c["Dv"])
    torch.testing.assert_close(got, loop_attention(q, k, v, **kw), rtol=1e-12, atol=1e-12)


def test_bottom_right_alignment_by_hand() -> None:
    # Sq=2 queries at the end of Skv=4 keys: query 0 sees keys 0..2, query 1 sees 0..3.
    vis = ops.visible_keys(2, 4, causal=True)[0]
    assert vis.tolist() == [[True, True, True, False], [True, True, True, True]]
    # Per-sequence lengths move the diagonal: L=3 -> query 1 sees keys 0..2, query 0 sees 0..1.
    vis = ops.visible_keys(2, 4, batch=1, causal=True, kv_lens=torch.tensor([3]))[0]
    assert vis.tolist() == [[True, True, False, False], [True, True, True, False]]
    # A window of 2 keeps the diagonal and one key before it.
    vis = ops.visible_keys(3, 3, causal=True, window=2)[0]
    assert vis.tolist() == [[True, False, False], [True, True, False], [False, True, True]]


def test_gqa_reads_kv_head_h_div_group() -> None:
    # kv head j holds the constant value j in v: output head h must equal h // 2 everywhere.
    q = torch.randn(1, 4, 3, 8)
    k = torch.randn(1, 2, 5, 8)
    v = torch.arange(2, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 5, 4)
    out = ops.attention(q, k, v)
    for h in range(4):
        assert torch.allclose(out[0, h], torch.full((3, 4), float(h // 2), dtype=torch.float64))


def test_rows_without_keys_are_zero() -> None:
    q, k, v = torch.randn(2, 1, 1, 4), torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    out = ops.attention(q, k, v, causal=True, kv_lens=torch.tensor([0, 3]))
    assert torch.equal(out[0], torch.zeros(1, 1, 4, dtype=torch.float64))
    assert out[1].abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(k=torch.randn(2, 2, 5, 8)), "attention input k: expected shape [1, Hkv, Skv, 4]"),
        (dict(v=torch.randn(1, 2, 6, 8)), "attention input v: expected shape [1, 2, 5, Dv]"),
        (dict(q=torch.randn(1, 3, 3, 4)), "Hq=3 must be a multiple of Hkv=2"),
        (dict(kv_lens=torch.tensor([9])), "values must lie in [0, 5]"),
        (dict(kv_lens=torch.tensor([1.0])), "expected an integer dtype"),
        (dict(window=2), "window requires causal=True"),
    ],
)
def test_attention_contract_errors_name_the_tensor(kwargs: dict, message: str) -> None:
    args = dict(q=torch.randn(1, 4, 3, 4), k=torch.randn(1, 2, 5, 4), v=torch.randn(1, 2, 5, 8))
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(ops.ContractError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ops.attention(q, k, v, **args)


def test_rms_norm_matches_definition() -> None:
    x, w = torch.randn(3, 8), torch.randn(8)
    expected = x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-5) * w.double()
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), expected)


def test_rope_styles() -> None:
    S, D = 5, 8
    theta = torch.rand(S, D // 2) * 3
    x = torch.randn(2, S, D)
    half = ops.rope(x, torch.cat([theta.cos()] * 2, -1), torch.cat([theta.sin()] * 2, -1), "half")
    inter = ops.rope(x, theta.cos().repeat_interleave(2, -1), theta.sin().repeat_interleave(2, -1), "interleave")
    # Half style rotates the pair (x[i], x[i + D/2]); interleave rotates (x[2i], x[2i+1]), both by theta_i.
    xd = x.double()
    for i in range(D // 2):
        c, s = theta[:, i].double().cos(), theta[:, i].double().sin()
        torch.testing.assert_close(half[..., i], xd[..., i] * c - xd[..., i + D // 2] * s)
        torch.testing.assert_close(half[..., i + D // 2], xd[..., i + D // 2] * c + xd[..., i] * s)
        torch.testing.assert_close(inter[..., 2 * i], xd[..., 2 * i] * c - xd[..., 2 * i + 1] * s)
        torch.testing.assert_close(inter[..., 2 * i + 1], xd[..., 2 * i + 1] * c + xd[..., 2 * i] * s)
    with pytest.raises(ops.ContractError, match="style 'spiral'"):
        ops.rope(x, torch.ones(S, D), torch.zeros(S, D), "spiral")


def test_swiglu_is_silu_gate_times_up() -> None:
    x = torch.randn(4, 6)
    gate, up = x.double()[:, :3], x.double()[:, 3:]
    torch.testing.assert_close(ops.swiglu(x), gate / (1 + torch.exp(-gate)) * up)
