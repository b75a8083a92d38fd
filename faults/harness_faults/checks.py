"""What `harness selftest` expects of each planted fault and correct variant of harness_faults.backends: the
cases where a fault must show (every one of them must fail) or a variant must pass.

The fault plugin's entry point (group `harness.faults`) names this module; the selftest engine in harness reads
`CHECKS` and registers the backends of the files `BACKENDS` names: the porting faults (backends.py) and the timing
cheats (cheats.py), whose checks are timed (short: one dtype, normal inputs) and judged on the timing verdict.
"""

from __future__ import annotations

from pathlib import Path

from harness.selftest import Check

# by path: the same whether installed or in a checkout
BACKENDS = tuple(
    str(Path(__file__).with_name(f))
    for f in ("backends.py", "cheats.py", "paged_faults.py", "mla_faults.py", "quant_faults.py")
)
ALL_DTYPES = ("float32", "bfloat16", "float16")
QUANT = ("w8a8", "fp8", "fp8-block")
QUANT_MOE = ("moe.experts", "moe.layer")  # the quantized MoE workloads
MOE_SHAPES = ("qwen2-moe", "deepseek-v3")  # tiny MoE shapes with a shared expert (gated, grouped routing)
# attention.sliding_window's shapes off the prefill path (tiny preset): decode and chunked prefill
WINDOW_OFF_PREFILL = ("gqa-decode", "mqa-decode", "gqa-chunked", "mqa-chunked")
# the attention workloads whose tiny shapes leave the scale to the contract's 1/sqrt(D) (attention.mla_decode always
# passes the model's 1/sqrt(192): a kernel that only mishandles a missing scale is right there)
DEFAULT_SCALE_WORKLOADS = tuple(
    f"attention.{kind}"
    for kind in ("prefill", "chunked_prefill", "decode", "sliding_window", "paged_decode", "paged_prefill")
)
# the paged KV forms (block_table): decode and chunked prefill from the block table
PAGED = ("attention.paged_decode", "attention.paged_prefill")

CHECKS: tuple[Check, ...] = (
    Check(
        "top-left causal alignment (SDPA is_causal)",
        "bug-top-left-causal",
        "caught",
        ("attention.chunked_prefill", "attention.decode", "attention.paged_prefill"),
        ALL_DTYPES,
    ),
    Check(
        "sliding window applied only when Sq == Skv (decode / chunked prefill see the whole cache)",
        "bug-window-prefill-only",
        "caught",
        ("attention.sliding_window",),
        ALL_DTYPES,
        WINDOW_OFF_PREFILL,
    ),
    Check(
        "the same fault passes the prefill-only window shapes (why the decode / chunked ones exist)",
        "bug-window-prefill-only",
        "passes",
        ("attention.sliding_window",),
        ALL_DTYPES,
        ("gqa", "mqa"),
    ),
    Check("GQA head h reads kv head h % Hkv", "bug-wrong-gqa", "caught", ("attention.*",), ALL_DTYPES, ("gqa",)),
    Check(
        "float16 softmax without max-subtraction",
        "bug-naive-softmax",
        "caught",
        ("attention.*",),
        ("float16",),
        inputs=("stress",),
    ),
    Check("attention returns zeros", "bug-zeros", "caught", ("attention.*",), ALL_DTYPES),
    Check("last token dropped", "bug-dropped-token", "caught", ("attention.*",), ALL_DTYPES),
    Check(
        "paged KV: blocks read in physical, not logical, order",
        "bug-paged-physical-order",
        "caught",
        PAGED,
        ALL_DTYPES,
    ),
    Check(
        "paged KV: the last partial block ignored",
        "bug-paged-partial-block",
        "caught",
        PAGED,
        ALL_DTYPES,
    ),
    Check(
        "MLA: softmax scale 1/sqrt(D = 576) instead of the model's 1/sqrt(192)",
        "bug-mla-scale",
        "caught",
        ("attention.mla_decode",),
        ALL_DTYPES,
    ),
    Check(
        "MLA: scores over the latent columns only (the 64 rope columns dropped)",
        "bug-mla-rope-dropped",
        "caught",
        ("attention.mla_decode",),
        ALL_DTYPES,
    ),
    Check("blockwise online softmax (another order)", "blockwise-online", "passes", ("attention.*",), ALL_DTYPES),
    Check(
        "MoE weights not renormalized",
        "bug-moe-no-renorm",
        "caught",
        ("moe.layer", "moe.route"),
        shapes=("mixtral", "qwen3-moe", "deepseek-v3"),
    ),
    Check(
        "DeepSeek bias in the combine weights",
        "bug-moe-bias-in-weights",
        "caught",
        ("moe.layer", "moe.route"),
        shapes=("deepseek-v3",),
    ),
    Check("expert ids off by one", "bug-moe-ids-off-by-one", "caught", ("moe.layer", "moe.route")),
    Check(
        "DeepSeek groups ranked by max, not top-2 sum",
        "bug-moe-groups-by-max",
        "caught",
        ("moe.layer", "moe.route"),
        shapes=("deepseek-v3",),
    ),
    Check("MoE token output dropped", "bug-moe-dropped-token", "caught", ("moe.layer", "moe.experts")),
    Check("dense MoE: every expert on every token (another order)", "dense-moe", "passes", ("moe.*",)),
    Check(
        "rope in the interleaved style where the model uses half",
        "bug-rope-interleaved",
        "caught",
        ("llm.llama3", "llm.qwen3"),
        inputs=("normal",),
        layerwise=True,
        culprit=(0, "attention"),
    ),
    Check(
        "one corrupted weight in layer 2's MLP",
        "bug-corrupt-layer2-mlp",
        "caught",
        ("llm.llama3",),
        inputs=("normal",),
        layerwise=True,
        culprit=(2, "mlp"),
    ),
    Check(
        "decode steps with rope positions one ahead (prefill right)",
        "bug-decode-rope-shift",
        "caught",
        ("llm.*",),
        inputs=("normal",),
        layerwise=True,
    ),
    Check(
        "torch-cpu on every LLM (no layer may be flagged)",
        "torch-cpu",
        "passes",
        ("llm.*",),
        inputs=("normal",),
        layerwise=True,
    ),
    Check(
        "Ascend: mask passed in torch's convention (True = visible)",
        "bug-ascend-mask-not-inverted",
        "caught",
        ("attention.*",),
        ("float32",),
    ),
    Check(
        "Ascend: scale left at the op default 1.0",
        "bug-ascend-default-scale",
        "caught",
        DEFAULT_SCALE_WORKLOADS,
        ("float16", "bfloat16"),
    ),
    Check(
        "Ascend: sparse_mode 2 (top-left) where 3 is meant",
        "bug-ascend-sparse-mode-2",
        "caught",
        ("attention.chunked_prefill", "attention.decode"),
        ("float16", "bfloat16"),
        ("gqa",),
    ),
    Check(
        "ascend-sim: the Ascend adapter over the simulator",
        "ascend-sim",
        "passes",
        ("attention.*", "moe.*"),
        ALL_DTYPES,
    ),
    # ----- timing cheats: parity passes, the timing must be flagged invalid by the check meant for it -----
    Check(
        "memoized on the inputs' data pointers (MLPerf TEST04's target)",
        "cheat-pointer-memo",
        "timing_invalid",
        ("attention.prefill",),
        ("float32",),
        ("gqa",),
        inputs=("normal",),
        presets=("small",),  # the anchor shape: a cached answer in a microsecond implies ~100+ TFLOP/s on a CPU
        # stale once set 1 is rewritten, or already on set 1's untimed call when it reuses freed addresses
        reasons=("faster than this device can compute", "timed output differs", "differs from set 0's output"),
    ),
    Check(
        "output buffer returned without recomputation",
        "cheat-stale-output",
        "timing_invalid",
        ("attention.prefill", "attention.decode"),
        ("float32",),
        ("gqa",),
        inputs=("normal",),
        reasons=("timed output differs", "did not recompute"),
    ),
    Check(
        "writes into its input (keys past the sequence length)",
        "cheat-writes-input",
        "timing_invalid",
        ("attention.decode", "attention.chunked_prefill"),
        ("float32",),
        ("gqa",),
        inputs=("normal",),
        reasons=("was modified",),
    ),
    Check(
        "CUDA work left on a side stream",
        "cheat-side-stream",
        "timing_invalid",
        ("attention.prefill", "attention.decode"),
        ("float16",),
        ("gqa",),
        inputs=("normal",),
        presets=("small",),
        reasons=("work outside the timed stream",),
        backend_options=(("graphs", "0"),),  # events on the current stream: what the cheat fools
    ),
    # ----- honest backends, timed: no timing check may flag them -----
    *(
        Check(
            f"{backend}: honest timings are all valid ({', '.join(workloads)} {'/'.join(presets)})",
            backend,
            "passes",
            workloads,
            (dtype,),
            shapes,
            inputs=("normal",),
            presets=presets,
            timed=True,
            time_oracles=backend == "cpu-reference",
        )
        for backend, workloads, dtype, shapes, presets in (
            ("torch-cpu", ("attention.prefill", "attention.decode", "moe.layer"), "float32", (), ("tiny",)),
            ("torch-cpu", ("attention.prefill",), "float32", ("gqa",), ("small",)),  # the memo cheat's, honestly
            ("cpu-reference", ("attention.prefill", "attention.decode"), "float32", (), ("tiny",)),
            ("ort-cpu", ("attention.prefill", "attention.decode"), "float32", (), ("tiny",)),
            ("ascend-sim", ("attention.prefill", "attention.decode"), "float32", (), ("tiny",)),
            ("cuda", ("attention.prefill", "attention.decode", "moe.layer"), "float16", (), ("tiny", "small")),
        )
    ),
)

# ----- batch invariance (--invariance / --require-invariance): a kept-apart block, appended -----
BACKENDS = (*BACKENDS, str(Path(__file__).with_name("invariance_faults.py")))
# workloads whose cases split into parts that run alone (batch rows, a shorter causal chunk)
INVARIANCE_WORKLOADS = ("attention.prefill", "attention.chunked_prefill", "attention.decode")
CHECKS = (
    *CHECKS,
    Check(
        "split-KV for a lone request (flash-decoding by batch size): parity passes, reported not batch invariant",
        "bug-batch-variant",
        "not_invariant",
        INVARIANCE_WORKLOADS,
        ("float32",),  # float32 shows the reordering in every case; bf16 / fp16 rounding may hide it in some
    ),
    Check(
        "the same fault fails under --require-invariance",
        "bug-batch-variant",
        "caught",
        INVARIANCE_WORKLOADS,
        ("float32",),
        require_invariance=True,
        reasons=("not batch invariant",),
    ),
    Check(
        "cpu-reference is batch invariant (--require-invariance passes, every case checked)",
        "cpu-reference",
        "passes",
        (*INVARIANCE_WORKLOADS, "moe.layer"),
        ALL_DTYPES,
        inputs=("normal",),
        require_invariance=True,
    ),
    # ----- quantized formats (quant_faults.py): linear.projection against the format's emulation -----
    Check(
        "per-tensor activation scale (w8a8)",
        "bug-quant-per-tensor-act",
        "caught",
        ("linear.*",),
        ("w8a8",),
        inputs=("stress",),
    ),
    Check("activation scale applied twice", "bug-quant-scale-twice", "caught", ("linear.*",), QUANT),
    Check("e4m3 truncation instead of round-half-even", "bug-quant-truncate", "caught", ("linear.*",), QUANT[1:]),
    Check("int8 truncation (stress)", "bug-quant-truncate", "caught", ("linear.*",), ("w8a8",), inputs=("stress",)),
    Check(
        "e4m3 cast without saturation (amax / (amax / 448) > 448 in float32)",
        "bug-quant-no-saturation",
        "caught",
        ("linear.*",),
        ("fp8-block",),
    ),
    Check("int32 accumulator as int16", "bug-quant-int16-acc", "caught", ("linear.*",), ("w8a8",)),
    Check("K summed in other chunks (correct)", "bug-quant-k-chunks", "passes", ("linear.*",), QUANT),
    Check("format skipped: the plain bfloat16 GEMM", "bug-quant-skipped", "caught", ("linear.*",), QUANT),
    # the same faults in every GEMM of the quantized MoE (experts and shared expert), at the shared-expert shapes
    Check("MoE: scale applied twice", "bug-quant-scale-twice", "caught", QUANT_MOE, QUANT, MOE_SHAPES),
    Check("MoE: int32 accumulator as int16", "bug-quant-int16-acc", "caught", QUANT_MOE, ("w8a8",), MOE_SHAPES),
    Check(
        "MoE: per-tensor activation scale (w8a8)",
        "bug-quant-per-tensor-act",
        "caught",
        QUANT_MOE,
        ("w8a8",),
        MOE_SHAPES,
        inputs=("stress",),
    ),
    Check("MoE: K summed in other chunks (correct)", "bug-quant-k-chunks", "passes", QUANT_MOE, QUANT, MOE_SHAPES),
    Check("MoE: format skipped (unquantized experts)", "bug-quant-skipped", "caught", QUANT_MOE, ("w8a8",), MOE_SHAPES),
)

# ----- distributed ops (dist.*): a kept-apart block, appended; they show only across 2+ ranks, so each check
# needs them (min_world) and is a skip in one process: `torchrun --nproc-per-node 2 -m harness selftest`
# (`--faults harness_faults.dist_checks` for this block alone) -----
BACKENDS = (*BACKENDS, str(Path(__file__).with_name("dist_faults.py")))
DIST_WORKLOADS = ("dist.moe_ep", "dist.attention_tp", "dist.llm_tp")
DIST_CHECKS: tuple[Check, ...] = (
    *(
        Check(description, backend, "caught", (workload,), ("float32",), shapes, ("normal",), min_world=2)
        for description, backend, workload, shapes in (
            ("EP tokens sent to the wrong rank (split sizes off by one)", "bug-ep-split-off", "dist.moe_ep", ()),
            ("EP combine in dispatch order, not token order", "bug-ep-dispatch-order", "dist.moe_ep", ()),
            # MQA's one kv head sits on rank 0: the last rank holds no heads to lose
            (
                "TP attention: the last rank's heads never gathered",
                "bug-tp-missing-gather",
                "dist.attention_tp",
                ("gqa-prefill", "gqa-decode", "gqa-window"),
            ),
            (
                "TP all_reduce missing on o_proj (each rank keeps its partial sum)",
                "bug-tp-missing-reduce",
                "dist.llm_tp",
                (),
            ),
        )
    ),
    Check(
        "EP dispatch sorted by expert (a correct different order)",
        "ep-expert-sorted",
        "passes",
        ("dist.moe_ep",),
        ("float32", "bfloat16"),
        inputs=("normal",),
        min_world=2,
    ),
    Check(
        "TP sums as reduce_scatter + all_gather (a correct different collective)",
        "tp-reduce-scatter",
        "passes",
        ("dist.llm_tp",),
        ("float32", "bfloat16"),
        inputs=("normal",),
        min_world=2,
    ),
    *(
        Check(
            f"{backend}: every dist.* case passes across the ranks",
            backend,
            "passes",
            DIST_WORKLOADS,
            ("float32", "bfloat16"),
            inputs=("normal",),
            min_world=2,
        )
        for backend in ("cpu-reference", "torch-cpu", "ascend-sim")
    ),
)
CHECKS = (*CHECKS, *DIST_CHECKS)
