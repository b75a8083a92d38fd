"""The Ascend backend: the kernel contract on Huawei Ascend NPUs through torch_npu's native kernels.

`ascend` imports the real torch_npu (guardedly: its failure text is the unavailability reason) and runs on
device "npu". `ascend-sim` is the same adapter over backends/ascend/sim.py, a CPU simulator of the same API,
so CI proves the adapter's logic: layouts, sparse modes, Ascend's inverted mask convention, explicit scales,
the MoE kernel chain. Never float64 on the device: the reference stays on the host.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, ClassVar

from harness import ops, paged
from harness.backend import Availability, UnsupportedCaseError
from harness.backends.ascend.fused_ep import SIM, FusedExpertParallel, grouped_swiglu, limits_for, refusal
from harness.backends.ascend.quant import AscendQuantOps
from harness.lazy import F, torch
from harness.op_types import Experts, MoeArgs, Routing, RoutingSpec, SharedExpert
from harness.timing import Timer, TimingConfig
from harness.torch_backend import TorchBackend

MAX_TOKENS = 2147483647
CAUSAL_SPARSE_MODE = 3  # rightDownCausal: the contract's bottom-right alignment
WINDOW_SPARSE_MODE = 4  # band with origin bottom-right
# FIA's MLA branch with query D 512 (docs/ascend.md "MLA"): latent 512 + rope 64, 32/64/128 query heads, one kv
# head, query S 1..16, PageAttention mandatory with block size 16 or 128, Sq > 1 only as sparse mode 3 (causal).
MLA_LATENT_D, MLA_ROPE_D = 512, 64
MLA_HEADS = (32, 64, 128)
MLA_MAX_SQ = 16
MLA_BLOCK_SIZES = (16, 128)
MLA_PAGE = 128  # the block size the adapter lays a contiguous latent cache out in (the docs recommend 128)


def _fia_pages(sq: int, block_size: int) -> bool:
    """Whether FIA's own block_table path takes a paged case (ascend-api.md): decode (Sq = 1) with a block size up
    to 512; the prompt path (Sq > 1, chunked prefill) only with multiples of 128."""
    return 0 < block_size <= 512 and (sq == 1 or block_size % 128 == 0)


def _import_torch_npu() -> tuple[ModuleType, Any]:
    """torch_npu and torch.npu; any exception (ImportError for libhccl.so, RuntimeError...) propagates. Where
    torch_npu is not installed at all, that is said without importing torch (harness list stays fast)."""
    import importlib.util

    if importlib.util.find_spec("torch_npu") is None:
        raise ModuleNotFoundError("No module named 'torch_npu'")
    import torch_npu

    return torch_npu, torch.npu  # type: ignore[attr-defined]


class NpuEventTimer:
    """torch.npu.Event pairs around `calls` calls; elapsed_time is in milliseconds."""

    method = "npu-events"

    def __init__(self, npu: Any) -> None:
        self.npu = npu

    def elapsed_ns(self, fn: Any, calls: int) -> float:
        start, end = self.npu.Event(enable_timing=True), self.npu.Event(enable_timing=True)
        self.npu.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e6


class Ascend(AscendQuantOps, TorchBackend):
    """The adapter: contract calls turned into torch_npu calls (layouts, sparse modes, Ascend's mask convention)."""

    name: ClassVar[str] = "ascend"
    device: ClassVar[str] = "npu"
    ray_resources: ClassVar[dict[str, Any]] = {"resources": {"NPU": 1}}  # `ray start --resources '{"NPU": 8}'`
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "bfloat16", "float16", "w8a8"})  # fp8: quant.py
    description: ClassVar[str] = "Huawei Ascend NPU through torch_npu's fused kernels (FIA, grouped matmul MoE)"
    collective_backend: ClassVar[str] = "hccl"

    @classmethod
    def place(cls, local_rank: int) -> None:
        """npu:LOCAL_RANK for the whole process (torch_npu.npu.set_device), so "npu" means it."""
        cls.load()[1].set_device(local_rank)

    @classmethod
    def load(cls) -> tuple[Any, Any]:
        return _import_torch_npu()

    @classmethod
    def probe(cls) -> Availability:
        try:
            _, npu = cls.load()
        except Exception as exc:  # torch_npu fails in many ways without CANN; the text is the reason
            return Availability(False, f"torch_npu not importable: {type(exc).__name__}: {exc}")
        try:
            if not npu.is_available():
                return Availability(False, "torch_npu imported but torch.npu.is_available() is False (no device)")
        except Exception as exc:
            return Availability(False, f"torch.npu.is_available() raised {type(exc).__name__}: {exc}")
        return Availability(True)

    def __init__(self) -> None:
        self.tnpu, self.npu = self.load()
        self._compressed_mask: torch.Tensor | None = None
        self._details: dict[str, Any] = {}

    # ----- device plumbing -----
    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.float64:
            raise TypeError("float64 never goes to the NPU (no fp64 on the AI Core); keep references on the host")
        return t.to(self.device)

    def synchronize(self) -> None:
        self.npu.synchronize()

    def timer(self, config: TimingConfig | None = None) -> Timer:
        return NpuEventTimer(self.npu)

    def environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {"torch": torch.__version__, "torch_npu": getattr(self.tnpu, "__version__", None)}
        try:
            env["device_name"] = self.npu.get_device_name()
            env["cann"] = self.tnpu.utils.get_cann_version()
        except Exception as exc:
            env["error"] = f"{type(exc).__name__}: {exc}"
        return env

    def memory_stats(self) -> dict[str, int]:
        return {"max_memory_allocated": int(self.npu.max_memory_allocated())}

    def reset_memory_stats(self) -> None:
        self.npu.reset_peak_memory_stats()
        self._details = {}  # called as each case starts: case_details() then says what this case ran

    def case_details(self) -> dict[str, Any]:
        return dict(self._details)

    # ----- attention -----
    def compressed_causal_mask(self) -> torch.Tensor:
        """The 2048 x 2048 upper-triangular mask sparse modes 2/3/4 take (True = masked)."""
        if self._compressed_mask is None:
            mask = torch.ones(2048, 2048, dtype=torch.bool).triu(diagonal=1)
            self._compressed_mask = mask.to(self.device)
        return self._compressed_mask

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = False,
        window: int | None = None,
        scale: float | None = None,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, _, Sq, D = q.shape
        Dv = v.shape[3]
        # Ascend's ops default to scale 1.0, not 1/sqrt(D): always pass the contract's scale explicitly.
        scale_value = 1.0 / math.sqrt(D) if scale is None else float(scale)
        if block_table is not None:
            if kv_lens is None:
                raise UnsupportedCaseError("a paged cache (block_table) needs kv_lens (FIA's actual_seq_lengths_kv)")
            if q.dtype != torch.float32 and Dv == D and window is None and _fia_pages(Sq, k.shape[1]):
                out = self._fused_infer_paged(q, k, v, block_table, kv_lens, scale=scale_value, causal=causal)
                skv = block_table.shape[1] * k.shape[1]  # the gathered cache's length
                visible = ops.visible_keys(Sq, skv, batch=B, causal=causal, kv_lens=kv_lens, device=q.device)
                return out.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)
            # FIA's block_table path is wired for fp16 / bf16 with D == Dv, and its prompt path (Sq > 1) only for
            # block sizes that are multiples of 128 (ascend-api.md); npu_fusion_attention (fp32, D != Dv) takes no
            # block table: gather the pages in logical order, then the contiguous path.
            k, v = paged.to_contiguous(k, v, block_table, kv_lens)  # [B, Hkv, MB*BS, D]
        Skv = k.shape[2]
        if q.dtype == torch.float32 or Dv != D:
            out = self._fusion_attention(q, k, v, causal=causal, window=window, scale=scale_value, kv_lens=kv_lens)
        else:
            out = self._fused_infer(q, k, v, causal=causal, window=window, scale=scale_value, kv_lens=kv_lens)
        visible = ops.visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens, device=q.device)
        # Fully masked rows: the NPU's value is unconfirmed; the contract says zeros.
        return out.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)

    def _fused_infer(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        window: int | None,
        scale: float,
        kv_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        """npu_fused_infer_attention_score (fp16 / bf16), BNSD; bottom-right causal as sparse mode 3, a sliding
        window as sparse mode 4 with pre_tokens = w - 1 (w keys, the diagonal included), next_tokens = 0."""
        B, Hq, Sq, _ = q.shape
        Hkv = k.shape[1]
        kwargs: dict[str, Any] = {
            "num_heads": Hq,
            "num_key_value_heads": Hkv,
            "input_layout": "BNSD",
            "scale": scale,
        }
        if kv_lens is not None:
            kwargs["actual_seq_lengths_kv"] = [int(n) for n in kv_lens.tolist()]
            kwargs["actual_seq_lengths"] = [Sq] * B
        if causal and window is None:
            kwargs.update(sparse_mode=CAUSAL_SPARSE_MODE, atten_mask=self.compressed_causal_mask())
        elif causal:
            mask = self.compressed_causal_mask()
            kwargs.update(sparse_mode=WINDOW_SPARSE_MODE, atten_mask=mask, pre_tokens=window - 1, next_tokens=0)
        out, _ = self.tnpu.npu_fused_infer_attention_score(q, k, v, **kwargs)
        return out

    def _fused_infer_paged(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        block_table: torch.Tensor,
        kv_lens: torch.Tensor,
        *,
        scale: float,
        causal: bool,
    ) -> torch.Tensor:
        """FIA over a paged cache, BSH: the contract's [num_blocks, block_size, Hkv, D] cache is FIA's
        (num_blocks, block_size, H_kv) as a view (no copy); q [B, Hq, Sq, D] -> [B, Sq, Hq * D]. Decode (Sq = 1)
        sees every valid key, so no mask is passed; a causal prefill chunk (Sq > 1, the last Sq positions of the
        cache) is sparse mode 3 (bottom-right) with the compressed mask and actual_seq_lengths = Sq."""
        B, Hq, Sq, D = q.shape
        nb, bs, hkv, _ = k.shape
        masking: dict[str, Any] = {}
        if Sq > 1 and causal:
            masking = {"sparse_mode": CAUSAL_SPARSE_MODE, "atten_mask": self.compressed_causal_mask()}
        if Sq > 1:
            masking["actual_seq_lengths"] = [Sq] * B
        out, _ = self.tnpu.npu_fused_infer_attention_score(
            q.transpose(1, 2).reshape(B, Sq, Hq * D),
            k.reshape(nb, bs, hkv * D),
            v.reshape(nb, bs, hkv * v.shape[3]),
            actual_seq_lengths_kv=[int(n) for n in kv_lens.tolist()],
            block_table=block_table.to(torch.int32),
            block_size=bs,
            num_heads=Hq,
            num_key_value_heads=hkv,
            input_layout="BSH",
            scale=scale,
            **masking,
        )  # [B, Sq, Hq * Dv]
        return out.view(B, Sq, Hq, -1).transpose(1, 2)  # [B, Hq, Sq, Dv]

    def _fusion_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        window: int | None,
        scale: float,
        kv_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        """npu_fusion_attention (fp32, and D != Dv), BNSD, with an explicit B1SS mask in Ascend's convention."""
        B, Hq, Sq, _ = q.shape
        Skv = k.shape[2]
        visible = ops.visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens, device=q.device)
        mask = ~visible[:, None]  # [B, 1, Sq, Skv]; Ascend masks say True = masked OUT, the inverse of the contract
        out = self.tnpu.npu_fusion_attention(
            q,
            k,
            v,
            Hq,
            "BNSD",
            atten_mask=mask,
            scale=scale,
            pre_tockens=MAX_TOKENS,
            next_tockens=MAX_TOKENS,
            sparse_mode=0,
        )[0]
        return out

    # ----- MLA -----
    def mla(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        *,
        dv: int,
        scale: float,
        causal: bool = True,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Absorbed MLA through FIA's MLA branch (query_rope / key_rope) where its documented constraints hold;
        elsewhere the generic path (Backend.mla: this adapter's attention, one kv head, the values a view of the
        latent part), the reason recorded in case_details()["mla"]."""
        refusal = mla_refusal(q, kv, dv=dv, causal=causal, block_table=block_table)
        if refusal is not None:
            out = super().mla(q, kv, dv=dv, scale=scale, causal=causal, kv_lens=kv_lens, block_table=block_table)
            self._details["mla"] = {"path": "attention (npu_fusion_attention, D != Dv)", "why": refusal}
            return out
        if block_table is None:
            pool, table, lens = _latent_pages(kv, kv_lens)  # [NB, 128, D], [B, MB], [B]
        else:
            pool, table, lens = kv, block_table, kv_lens
        assert lens is not None  # the contract requires kv_lens with a block_table
        out = self._fused_infer_mla(q, pool, table, lens, dv=dv, scale=float(scale))
        self._details["mla"] = {
            "path": "npu_fused_infer_attention_score MLA (query_rope, key_rope), BNSD",
            "block_size": int(pool.shape[1]),
            "cache": "paged as given" if block_table is not None else "contiguous, laid out in pages by the adapter",
        }
        visible = ops.visible_keys(
            q.shape[2], table.shape[1] * pool.shape[1], batch=q.shape[0], causal=causal, kv_lens=lens, device=q.device
        )
        return out.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)  # rows seeing no key: zeros

    def _fused_infer_mla(
        self, q: torch.Tensor, pool: torch.Tensor, table: torch.Tensor, lens: torch.Tensor, *, dv: int, scale: float
    ) -> torch.Tensor:
        """q [B, H, Sq, D] over a paged latent pool [NB, BS, D]: query / query_rope and the pool's nope / rope
        parts as separate contiguous tensors (FIA takes no strided views, so the split copies), the pool as BNSD's
        (NB, KV_N = 1, BS, d); key = value = the nope part (the op's values: value's D, 512)."""
        _, H, Sq, D = q.shape
        nb, bs, _ = pool.shape
        nope = pool[..., :dv].contiguous().view(nb, 1, bs, dv)
        rope = pool[..., dv:].contiguous().view(nb, 1, bs, D - dv)
        kwargs: dict[str, Any] = {
            "query_rope": q[..., dv:].contiguous(),
            "key_rope": rope,
            "num_heads": H,
            "num_key_value_heads": 1,
            "input_layout": "BNSD",
            "scale": scale,
            "block_table": table.to(torch.int32),
            "block_size": bs,
            "actual_seq_lengths_kv": [int(n) for n in lens.tolist()],
        }
        if Sq > 1:  # the MLA branch takes Sq > 1 only as rightDownCausal with the compressed mask
            kwargs.update(sparse_mode=CAUSAL_SPARSE_MODE, atten_mask=self.compressed_causal_mask())
        out, _ = self.tnpu.npu_fused_infer_attention_score(q[..., :dv].contiguous(), nope, nope, **kwargs)
        return out  # [B, H, Sq, dv]

    # ----- norms, rotary, activation -----
    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        return self.tnpu.npu_rms_norm(x, w, epsilon=eps)[0]

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
        shape = torch.broadcast_shapes(x.shape, cos.shape)
        return self.tnpu.npu_rotary_mul(x, cos.expand(shape), sin.expand(shape), rotary_mode=style)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        return self.tnpu.npu_swiglu(x, dim=-1)

    # ----- MoE -----
    def route(self, logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
        """npu_moe_gating_top_k_softmax (softmax; renormalized here when asked, the op does not) or
        npu_moe_gating_top_k with norm_type 1 and group mode 1 (DeepSeek: sigmoid, bias, top-2 sum groups)."""
        if spec.scheme == "softmax_topk":
            weights, ids, _ = self.tnpu.npu_moe_gating_top_k_softmax(logits, None, k=spec.top_k)
            weights = weights.float()
            if spec.renormalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            return Routing((weights * spec.scaling).to(logits.dtype), ids.long())
        if not spec.renormalize:
            raise NotImplementedError(
                "npu_moe_gating_top_k renormalizes sigmoid scores: renormalize=False is not mappable"
            )
        weights, ids, _ = self.tnpu.npu_moe_gating_top_k(
            logits,
            spec.top_k,
            bias=bias,
            k_group=spec.topk_group,
            group_count=spec.n_group,
            group_select_mode=1,
            norm_type=1,
            routed_scaling_factor=spec.scaling,
        )
        return Routing(weights, ids.long())

    def router_logits(self, x: torch.Tensor, router_w: torch.Tensor) -> torch.Tensor:
        return x @ router_w.T  # [T, E] in the case dtype: the gating kernels take it as the model has it

    def experts(self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None) -> torch.Tensor:
        """npu_moe_init_routing_v2 (counts) -> npu_grouped_matmul(w13) -> npu_swiglu -> npu_grouped_matmul(w2)
        -> npu_moe_token_unpermute(probs), the vllm-ascend order (after the gating of `route`)."""
        T, E = x.shape[0], experts.w_gate.shape[0]
        weights, ids = routing.weights, routing.ids
        expanded, row_idx, counts, _ = self.tnpu.npu_moe_init_routing_v2(
            x,
            ids.to(torch.int32),
            active_num=T * ids.shape[1],
            expert_num=E,
            expert_tokens_num_type=1,
            expert_tokens_num_flag=True,
        )
        y = grouped_swiglu(self.tnpu, expanded, experts, counts)  # [T*k, H]
        out = self.tnpu.npu_moe_token_unpermute(y, row_idx, probs=weights.to(y.dtype))  # [T, H]
        if shared is not None:
            out = (out.float() + shared.apply(x, self._swiglu_mlp).float()).to(x.dtype)
        return out

    def moe_ep(self, x: Any, router_w: Any, w_gate: Any, w_up: Any, w_down: Any, spec: RoutingSpec, *,
               bias: Any = None, shared: SharedExpert | None = None, routing: Routing | None = None,
               group: Any = None) -> tuple[torch.Tensor, Routing]:  # fmt: skip
        """Expert parallel through npu_moe_distribute_dispatch / _combine where the SoC's documented limits allow
        (backends/ascend/fused_ep.py); elsewhere the contract's default, the reason in case_details()["moe_ep"]."""
        import torch.distributed as dist

        args = MoeArgs(x, router_w, Experts(w_gate, w_up, w_down), spec, bias, shared, routing)
        world, name = dist.get_world_size(group), self.npu.get_device_name()
        limits = self.distribute_limits(name)
        why = refusal(limits, args, world, name)
        if why is not None:
            self._details["moe_ep"] = {"path": "all_to_all_single (Backend.moe_ep default)", "why": why}
            return super().moe_ep(x, router_w, w_gate, w_up, w_down, spec, bias=bias, shared=shared,
                                  routing=routing, group=group)  # fmt: skip
        self._details["moe_ep"] = {"path": "npu_moe_distribute_dispatch -> npu_grouped_matmul -> "
                                   "npu_moe_distribute_combine", "soc": limits.soc}  # fmt: skip
        return FusedExpertParallel().run(self, args, group, self.hccl_comm_name(group))

    def distribute_limits(self, device_name: str) -> Any:
        """The documented limits of the fused EP pair on this SoC (fused_ep.DistributeLimits), None if undocumented."""
        return limits_for(device_name)

    def hccl_comm_name(self, group: Any) -> str:
        """group_ep: the HCCL communicator name of `group` for this rank, as the op-plugin docs get it."""
        import torch.distributed as dist

        return group._get_backend(torch.device(self.device)).get_hccl_comm_name(dist.get_rank())

    def _swiglu_mlp(self, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> Any:
        """The shared expert's MLP on npu_swiglu (fused gate / up halves), as the routed experts run: [T, H]."""
        return F.linear(self.tnpu.npu_swiglu(torch.cat([x @ w_gate.T, x @ w_up.T], dim=-1)), w_down)


def mla_refusal(
    q: torch.Tensor, kv: torch.Tensor, *, dv: int, causal: bool, block_table: torch.Tensor | None
) -> str | None:
    """Why FIA's MLA branch cannot take this case (its documented constraints), or None when it can."""
    _, H, Sq, D = q.shape
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"FIA takes float16 / bfloat16 queries only, got {str(q.dtype).removeprefix('torch.')}"
    if (dv, D - dv) != (MLA_LATENT_D, MLA_ROPE_D):
        return f"the MLA branch takes latent {MLA_LATENT_D} + rope {MLA_ROPE_D}, got {dv} + {D - dv}"
    if H not in MLA_HEADS:
        return f"the MLA branch takes {', '.join(map(str, MLA_HEADS))} query heads, got {H}"
    if Sq > MLA_MAX_SQ:
        return f"the MLA branch takes query S 1..{MLA_MAX_SQ}, got {Sq}"
    if Sq > 1 and not causal:
        return "the MLA branch takes Sq > 1 only as sparse mode 3 (causal)"
    if block_table is not None and kv.shape[1] not in MLA_BLOCK_SIZES:
        return f"the MLA branch takes block sizes {', '.join(map(str, MLA_BLOCK_SIZES))}, got {kv.shape[1]}"
    return None


def _latent_pages(kv: torch.Tensor, kv_lens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A contiguous latent cache [B, Skv, D] as FIA's mandatory pages: (pool [B * MB, 128, D], table [B, MB] in
    order, lengths [B]); Skv padded up to a multiple of 128 (the padding is never read: lengths stop before it)."""
    B, skv, D = kv.shape
    pad = -skv % MLA_PAGE
    pool = F.pad(kv, (0, 0, 0, pad)).reshape(-1, MLA_PAGE, D)  # [B * MB, 128, D]
    table = torch.arange(pool.shape[0], dtype=torch.int32, device=kv.device).view(B, -1)
    lens = kv_lens if kv_lens is not None else torch.full((B,), skv, dtype=torch.long, device=kv.device)
    return pool, table, lens


class AscendSim(Ascend):
    """The adapter over the CPU simulator: proves the adapter's logic in CI; timings mean nothing."""

    name: ClassVar[str] = "ascend-sim"
    device: ClassVar[str] = "cpu"
    ray_resources: ClassVar[dict[str, Any]] = {}  # CPU work
    simulated: ClassVar[bool] = True
    description: ClassVar[str] = "the ascend adapter over a CPU simulator of torch_npu (parity only)"
    collective_backend: ClassVar[str] = "gloo"  # the simulator's collectives run on the CPU

    @classmethod
    def place(cls, local_rank: int) -> None:
        """A CPU simulator: nothing to place."""

    @classmethod
    def load(cls) -> tuple[Any, Any]:
        from harness.backends.ascend import sim

        return sim, sim.npu

    def distribute_limits(self, device_name: str) -> Any:
        """The rules both SoCs share, without their world-size / H floors (docs/ascend.md)."""
        return SIM

    def hccl_comm_name(self, group: Any) -> str:
        """The simulator's stand-in for the HCCL name: the gloo group registered under a name its ops resolve."""
        from harness.backends.ascend.sim_moe_distribute import comm_name

        return comm_name(group)
