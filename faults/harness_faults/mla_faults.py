"""Planted faults of absorbed MLA decode (op `mla`): the two ways an MLA port goes wrong that a plain attention
check cannot see. Both run torch-cpu's own MLA path, so the only difference from a correct backend is the mistake.
"""

from __future__ import annotations

from typing import ClassVar

from harness.backends.torch_cpu import TorchCpu
from harness.torch_mla import absorbed_mla


class MlaDefaultScale(TorchCpu):
    """Softmax scale 1/sqrt(D) of the absorbed head dim 576, where the model's 1/sqrt(192) (qk_nope 128 + rope 64,
    before absorption) is meant: what a kernel that ignores the scale argument computes."""

    name: ClassVar[str] = "bug-mla-scale"

    def mla(self, q, kv, *, dv, scale, causal=True, kv_lens=None, block_table=None):  # type: ignore[override]
        wrong = q.shape[-1] ** -0.5  # the bug
        return super().mla(q, kv, dv=dv, scale=wrong, causal=causal, kv_lens=kv_lens, block_table=block_table)


class MlaRopeDropped(TorchCpu):
    """Scores over the latent part only (the first Dv columns of q and kv): the rope columns never reach the
    dot product, as when a kernel takes the values' width for the keys' too."""

    name: ClassVar[str] = "bug-mla-rope-dropped"

    def mla(self, q, kv, *, dv, scale, causal=True, kv_lens=None, block_table=None):  # type: ignore[override]
        kw = {"scale": scale, "causal": causal, "kv_lens": kv_lens, "block_table": block_table}
        # the bug: keys cut to the values' width (D -> Dv), so q's and kv's rope columns are never multiplied
        return absorbed_mla(q[..., :dv], kv[..., :dv], dv=dv, **kw)
