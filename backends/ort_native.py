"""ONNX Runtime's own fused kernels as separate implementations of the ort-cpu backend, so reports compare them
with the exported torch code:

- `ort-cpu-attention`: attention on ONNX's `Attention` operator (opset 24): GQA from the head counts, `is_causal`
  where both causal alignments coincide (Sq == Skv), else a boolean visibility mask (the contract's bottom-right
  causal, window and ragged cache in one), D != Dv allowed, `softmax_precision` float32 for float16 inputs.
- `ort-cpu-gqa`: attention on `com.microsoft.GroupQueryAttention`, the kernel ORT's LLM pipelines use: always a
  KV cache, so the contract's cache is split per sequence into past (the first L_b - Sq keys) and the Sq new
  tokens, `seqlens_k` = L_b - 1, bottom-right causal by construction, windows by `local_window_size` = w (ORT
  counts the diagonal in; flash's left window is w - 1). With past context and Sq > 1 the op takes one sequence at
  a time ("batch_size must be 1 when sequence_length > 1 and past context is given"): such a batch runs per sequence.
  It takes no D != Dv and no sequence shorter than its query chunk: those cases are skips, with the reason.
- `ort-cpu-moe`: the MoE layer on `com.microsoft.MoE` (float32 on CPU), gate/up rows interleaved (swiglu_fusion
  1), SwiGLU as silu(gate) * up (activation_alpha 1, beta 0), routing by ORT from the logits (softmax, top-k,
  `normalize_routing_weights`). A forced routing (parity's arithmetic check) is fed as logits log(w) on the
  forced experts and -inf elsewhere; the routing returned is the rule ORT applies, recomputed by torch-cpu.
  Grouped sigmoid routing, a selection bias, a routed scale and shared experts are not in the op: skips.

They implement only those ops (the others would be ort-cpu's exports again; ort-cpu-moe keeps ort-cpu's exported
attention, which every backend must have). The graphs are built directly
(onnx.helper), one per op, dtype and static attributes, with symbolic batch / sequence dims; session creation is
recorded as compile time.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any, ClassVar

from harness import ops
from harness.backend import Support, UnsupportedCaseError
from harness.backends.onnxruntime import OrtCpu
from harness.lazy import torch
from harness.op_types import MoeArgs, Routing

if TYPE_CHECKING:
    from harness.workload import Case

ONNX_OPSET = 24
MS_DOMAIN = "com.microsoft"


class _NativeGraphs(OrtCpu):
    """Sessions over single-operator graphs built by hand (no export)."""

    native_ops: ClassVar[frozenset[str]] = frozenset()
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "float16"})  # no quantized native kernel

    @classmethod
    def implemented_ops(cls) -> frozenset[str]:
        """Only the op ORT runs natively here: the others would be ort-cpu's exports again, rows that say nothing
        new in a report (run ort-cpu for them)."""
        return cls.native_ops

    def _native(self, key: dict[str, Any], build: Any) -> Any:
        text = json.dumps(key, sort_keys=True, default=str)
        if text not in self._sessions:
            started = time.perf_counter()
            model = build()
            self._sessions[text] = self.ort.InferenceSession(
                model.SerializeToString(), self.session_options(), providers=[(self.provider, self.provider_options())]
            )
            self._compile["session_s"] = self._compile.get("session_s", 0.0) + time.perf_counter() - started
        return self._sessions[text]


def _onnx() -> tuple[Any, Any]:
    """(TensorProto, helper), imported when a graph is built: never at import time (the onnx extra is optional)."""
    from onnx import TensorProto, helper

    return TensorProto, helper


def _elem(dtype: torch.dtype) -> int:
    TensorProto, _ = _onnx()
    types = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}
    if dtype not in types:
        raise UnsupportedCaseError(f"ORT's CPU kernels take float32 / float16, not {dtype}")
    return types[dtype]


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any]) -> Any:
    _, helper = _onnx()
    graph = helper.make_graph(nodes, "harness_native", inputs, outputs)
    opsets = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=11)


def _run(session: Any, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    arrays = {name: t.detach().contiguous().numpy() for name, t in feeds.items()}
    return [torch.from_numpy(o) for o in session.run(None, arrays)]


class OrtCpuAttention(_NativeGraphs):
    name: ClassVar[str] = "ort-cpu-attention"
    description: ClassVar[str] = "ONNX Runtime CPU: attention on ONNX's own Attention operator (opset 24)"
    native_ops: ClassVar[frozenset[str]] = frozenset({"attention"})

    def supports(self, case: Case) -> Support:
        if case.dtype == "float16" and case.inputs == "stress":
            return Support(
                False,
                "ORT's CPU Attention kernel loses float16 accuracy on large-magnitude inputs: worst-row rel_l2 "
                "0.005-0.0096 against the float16 budget 0.005 in 16 of 24 stress cases of the ci suite, "
                "softmax_precision=float32 set (the exported graph, ort-cpu, passes them)",
            )
        return super().supports(case)

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
    ) -> torch.Tensor:
        B, Hq, Sq, D = q.shape
        Skv = k.shape[2]
        elem = _elem(q.dtype)
        square_causal = causal and window is None and kv_lens is None and Sq == Skv
        masked = (causal and not square_causal) or window is not None or kv_lens is not None
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        key = {
            "op": "Attention",
            "dtype": str(q.dtype),
            "heads": (Hq, k.shape[1], D, v.shape[3]),
            "causal": square_causal,
            "masked": masked,
            "scale": scale,
        }

        TensorProto, helper = _onnx()

        def build() -> Any:
            names = ["q", "k", "v", "mask"] if masked else ["q", "k", "v"]
            attrs: dict[str, Any] = {"is_causal": int(square_causal), "scale": scale}
            if q.dtype == torch.float16:
                attrs["softmax_precision"] = TensorProto.FLOAT  # else the softmax runs in float16 itself
            node = helper.make_node("Attention", names, ["y"], **attrs)
            dims = {
                "q": ["B", Hq, "Sq", D],
                "k": ["B", k.shape[1], "Skv", D],
                "v": ["B", k.shape[1], "Skv", v.shape[3]],
            }
            inputs = [helper.make_tensor_value_info(n, elem, dims[n]) for n in ("q", "k", "v")]
            if masked:
                inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", 1, "Sq", "Skv"]))
            output = helper.make_tensor_value_info("y", elem, ["B", Hq, "Sq", v.shape[3]])
            return _model([node], inputs, [output])

        session = self._native(key, build)
        feeds = {"q": q, "k": k, "v": v}
        visible = None
        if masked:
            visible = ops.visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens)  # [B,Sq,Skv]
            feeds["mask"] = visible[:, None]  # [B, 1, Sq, Skv]: True = attend, as ONNX's boolean mask means
        out = _run(session, feeds)[0]  # [B, Hq, Sq, Dv]
        if visible is not None:
            out = out.masked_fill(~visible.any(-1)[:, None, :, None], 0.0)  # a row that sees no key: zeros
        return out


class OrtCpuGqa(_NativeGraphs):
    name: ClassVar[str] = "ort-cpu-gqa"
    description: ClassVar[str] = "ONNX Runtime CPU: attention on com.microsoft.GroupQueryAttention (KV-cache form)"
    native_ops: ClassVar[frozenset[str]] = frozenset({"attention"})

    def local_window(self, window: int) -> int:
        """The contract's w keys (the diagonal included) as GQA's local_window_size: ORT counts the diagonal in
        too, so w itself (flash's left window is w - 1); parity checks it (sliding_window workloads)."""
        return window

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
    ) -> torch.Tensor:
        B, Hq, Sq, D = q.shape
        Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
        elem = _elem(q.dtype)
        if Dv != D:
            raise UnsupportedCaseError(f"GroupQueryAttention needs one head size for k and v (D {D} != Dv {Dv})")
        if not causal and window is not None:
            raise UnsupportedCaseError("GroupQueryAttention takes a window only with causal attention")
        lens = [Skv] * B if kv_lens is None else [int(n) for n in kv_lens.tolist()]
        if causal and min(lens) < Sq:
            raise UnsupportedCaseError(
                f"GroupQueryAttention needs every sequence at least as long as the query chunk (Sq {Sq}, kv_lens "
                f"{lens}): its rows with no visible key do not exist there"
            )
        if not causal and kv_lens is not None:
            raise UnsupportedCaseError("GroupQueryAttention without causal masking takes no ragged cache")
        past_len = max(lens) - Sq
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        key = {
            "op": "GroupQueryAttention",
            "dtype": str(q.dtype),
            "heads": (Hq, Hkv, D),
            "causal": causal,
            "window": window,
            "scale": scale,
            "past": past_len > 0,
        }

        TensorProto, helper = _onnx()

        def build() -> Any:
            names = ["q", "k", "v", "past_k" if past_len else "", "past_v" if past_len else "", "seqlens_k", "total"]
            attrs: dict[str, Any] = {"num_heads": Hq, "kv_num_heads": Hkv, "scale": scale, "causal": int(causal)}
            if window is not None:
                attrs["local_window_size"] = self.local_window(window)
            node = helper.make_node(
                "GroupQueryAttention", names, ["y", "present_k", "present_v"], domain=MS_DOMAIN, **attrs
            )
            inputs = [
                helper.make_tensor_value_info("q", elem, ["B", "S", Hq * D]),
                helper.make_tensor_value_info("k", elem, ["B", "S", Hkv * D]),
                helper.make_tensor_value_info("v", elem, ["B", "S", Hkv * D]),
            ]
            if past_len:
                inputs += [helper.make_tensor_value_info(n, elem, ["B", Hkv, "P", D]) for n in ("past_k", "past_v")]
            inputs += [
                helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
                helper.make_tensor_value_info("total", TensorProto.INT32, []),
            ]
            outputs = [
                helper.make_tensor_value_info("y", elem, ["B", "S", Hq * D]),
                helper.make_tensor_value_info("present_k", elem, ["B", Hkv, "T", D]),
                helper.make_tensor_value_info("present_v", elem, ["B", Hkv, "T", D]),
            ]
            return _model([node], inputs, outputs)

        session = self._native(key, build)
        if B > 1 and Sq > 1 and past_len > 0:  # the op's limit: chunks over a past run one sequence at a time
            return torch.cat(
                [
                    self.attention(
                        q[b : b + 1], k[b : b + 1, :, : lens[b]], v[b : b + 1, :, : lens[b]], causal=causal,
                        window=window, scale=scale,
                    )
                    for b in range(B)
                ]
            )  # fmt: skip
        # The cache as GQA holds it: per sequence b, the first L_b - Sq keys are the past (left-aligned in a
        # [B, Hkv, P, D] buffer) and the last Sq keys are this step's tokens.
        if kv_lens is None:
            new_k, new_v = k[:, :, past_len:], v[:, :, past_len:]  # [B, Hkv, Sq, D]
        else:
            new_k = torch.stack([k[b, :, n - Sq : n] for b, n in enumerate(lens)])  # [B, Hkv, Sq, D]
            new_v = torch.stack([v[b, :, n - Sq : n] for b, n in enumerate(lens)])
        feeds = {
            "q": q.transpose(1, 2).reshape(B, Sq, Hq * D),  # [B, Sq, Hq*D]
            "k": new_k.transpose(1, 2).reshape(B, Sq, Hkv * D),
            "v": new_v.transpose(1, 2).reshape(B, Sq, Hkv * D),
            "seqlens_k": torch.tensor([n - 1 for n in lens], dtype=torch.int32),
            "total": torch.tensor(max(lens), dtype=torch.int32),
        }
        if past_len:
            feeds["past_k"], feeds["past_v"] = k[:, :, :past_len], v[:, :, :past_len]  # [B, Hkv, P, D]
        y = _run(session, feeds)[0]  # [B, Sq, Hq*D]
        return y.reshape(B, Sq, Hq, D).transpose(1, 2)  # [B, Hq, Sq, D]


def fc1_interleaved(w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """[E, F, H] x2 -> [E, 2F, H] with rows gate_0, up_0, gate_1, up_1, ... (swiglu_fusion = 1)."""
    E, F, H = w_gate.shape
    return torch.stack([w_gate, w_up], dim=2).reshape(E, 2 * F, H)


class OrtCpuMoe(_NativeGraphs):
    name: ClassVar[str] = "ort-cpu-moe"
    description: ClassVar[str] = "ONNX Runtime CPU: the MoE layer on com.microsoft.MoE (float32, interleaved gate/up)"
    native_ops: ClassVar[frozenset[str]] = frozenset({"moe", "attention"})  # attention: ort-cpu's (required)
    fc1_layout = staticmethod(fc1_interleaved)

    def moe_layer(self, args: MoeArgs) -> tuple[torch.Tensor, Routing]:
        """The layer on the fused op, which routes inside: the router input is the logits."""
        x, spec, bias, shared, routing = args.x, args.spec, args.bias, args.shared, args.routing
        w_gate, w_up, w_down = args.experts.tensors()
        router_w = args.router_w
        if x.dtype != torch.float32:
            raise UnsupportedCaseError(f"com.microsoft.MoE runs float32 only on ORT's CPU, not {x.dtype}")
        missing = [
            what
            for what, absent in (
                (f"scheme {spec.scheme} (softmax_topk only)", spec.scheme != "softmax_topk"),
                ("a selection bias", bias is not None),
                ("expert groups", spec.n_group != 1),
                (f"a routed scale {spec.scaling:g}", spec.scaling != 1.0),
                ("a shared expert", shared is not None),
            )
            if absent
        ]
        if missing:
            raise UnsupportedCaseError("com.microsoft.MoE has no " + ", ".join(missing))
        E, F, H = w_gate.shape
        logits = (x @ router_w.T).float()  # [T, E]: ORT's router input is the logits (it applies the softmax)
        if routing is not None:
            logits = _forcing_logits(routing.weights, routing.ids, E, spec.renormalize)
        key = {"op": "MoE", "k": spec.top_k, "normalize": spec.renormalize, "dims": (E, F, H)}

        TensorProto, helper = _onnx()

        def build() -> Any:
            node = helper.make_node(
                "MoE",
                ["x", "router", "fc1", "", "fc2"],
                ["y"],
                domain=MS_DOMAIN,
                k=spec.top_k,
                activation_type="swiglu",
                swiglu_fusion=1,
                activation_alpha=1.0,
                activation_beta=0.0,
                normalize_routing_weights=int(spec.renormalize),
            )
            inputs = [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", H]),
                helper.make_tensor_value_info("router", TensorProto.FLOAT, ["T", E]),
                helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [E, 2 * F, H]),
                helper.make_tensor_value_info("fc2", TensorProto.FLOAT, [E, H, F]),
            ]
            outputs = [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H]),
                helper.make_tensor_value_info("route_weights", TensorProto.FLOAT, ["T", spec.top_k]),
                helper.make_tensor_value_info("route_ids", TensorProto.INT64, ["T", spec.top_k]),
            ]
            return _model([node, *_softmax_topk_nodes(spec.top_k, spec.renormalize)], inputs, outputs)

        session = self._native(key, build)
        fc1 = self.fc1_layout(w_gate, w_up)  # [E, 2F, H]
        out, weights, ids = _run(session, {"x": x, "router": logits, "fc1": fc1, "fc2": w_down})  # [T, H], [T, k] x2
        return out, routing if routing is not None else Routing(weights, ids)


def _softmax_topk_nodes(k: int, renormalize: bool) -> list[Any]:
    """Nodes beside the MoE op computing the routing it applies (it does not output it): softmax of `router`,
    top k (ONNX's TopK breaks ties to the lower index, as the contract does), renormalized when asked."""
    TensorProto, helper = _onnx()

    def const(name: str, value: int) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [value]))

    last = "route_weights_raw" if renormalize else "route_weights"
    nodes = [
        const("route_k", k),
        helper.make_node("Softmax", ["router"], ["route_probs"], axis=-1),
        helper.make_node("TopK", ["route_probs", "route_k"], [last, "route_ids"], axis=-1, largest=1, sorted=1),
    ]
    if renormalize:
        nodes += [
            const("route_axis", -1),
            helper.make_node("ReduceSum", [last, "route_axis"], ["route_sum"], keepdims=1),  # [T, 1]
            helper.make_node("Div", [last, "route_sum"], ["route_weights"]),
        ]
    return nodes


def _forcing_logits(weights: torch.Tensor, ids: torch.Tensor, experts: int, renormalize: bool) -> torch.Tensor:
    """Logits whose softmax + top-k + (re)normalization gives back exactly `weights` on `ids`.

    log(w) on the forced experts; the rest -inf, unless the weights are not normalized (then the remaining
    probability mass is spread over the other experts, which must stay below every forced weight)."""
    w = weights.float().clamp_min(1e-30)  # [T, k]
    logits = torch.full((w.shape[0], experts), -math.inf)  # [T, E]
    if not renormalize:
        rest = (1.0 - w.sum(-1, keepdim=True)).clamp_min(0.0) / max(experts - w.shape[1], 1)  # [T, 1]
        if bool((rest >= w.min(-1, keepdim=True).values).any()):
            raise UnsupportedCaseError("a forced routing whose unnormalized weights the MoE op's softmax cannot hold")
        logits = torch.log(rest.clamp_min(1e-30)).expand(-1, experts).clone()
    return logits.scatter(1, ids.long(), torch.log(w))
