"""`harness judge` on REAL msprobe dumps made on the CPU (tests/judge_dumps.py, one subprocess per dump):
a correct dump passes, a planted kernel fault is found at its op, unknown APIs are listed, a corrupt or partial
dump exits 2 naming the file, --against judges a target dump against a source dump, and the per-op verdict
agrees with `harness run` on the same tensors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results import read_records

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("msprobe") is None, reason="mindstudio-probe (the msprobe extra) is not installed"
)

SCRIPT = Path(__file__).with_name("judge_dumps.py")
ROOT = Path(__file__).resolve().parents[1]


def make_dumps(base: Path, *jobs: tuple[str, ...]) -> None:
    """Run the dump scenarios side by side; each must succeed (a crashed dumper still leaves a partial dump)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), job[0], str(base / job[0]), *job[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=base,
        )
        for job in jobs
    ]
    for job, proc in zip(jobs, procs, strict=True):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"dump {job[0]} failed:\n{out.decode()[-3000:]}"


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dumps")
    make_dumps(base, ("torch",), ("torch-fault",), ("sim",), ("sim-fault",))
    return base


def judge(harness_cli, tmp_path: Path, *args: str):
    """`harness judge ... --format json`: (exit code, summary or None, records, output)."""
    out = tmp_path / f"judge{len(list(tmp_path.glob('judge*.jsonl')))}.jsonl"
    run = harness_cli("judge", *args, "--out", str(out), "--format", "json")
    summary = json.loads(run.output) if run.exit_code in (0, 1, 3) and run.output.startswith("{") else None
    return run.exit_code, summary, read_records(out) if out.exists() else [], run.output


def ops(summary: dict) -> dict[str, dict]:
    return {o["call"]: o for o in summary["ops"]}


def test_correct_torch_dump_passes_and_lists_what_it_does_not_judge(harness_cli, tmp_path, dumps):
    code, summary, records, _ = judge(harness_cli, tmp_path, str(dumps / "torch"))
    assert code == 0
    judged = {o["op"] for o in summary["ops"] if o["status"] == "passed"}
    # SDPA (explicit bottom-right mask, GQA), the L0 RMSNorm and Linear modules, silu, and silu * up as SwiGLU
    assert {"attention", "rms_norm", "linear", "silu", "swiglu"} <= judged
    assert summary["failed"] == 0 and summary["not_judged"]["Torch.erf"] == 1
    by_status = {r.case.op: r.status for r in records}
    assert by_status["Torch.erf"] == "skipped" and by_status["attention"] == "passed"
    attention = next(r for r in records if r.case.op == "attention")
    assert attention.case.backend == "dump:torch" and attention.case.shape == "2x4x6x16"
    assert attention.parity is not None and attention.parity.budget.rel_l2 > 0


def test_planted_attention_fault_is_found_at_sdpa(harness_cli, tmp_path, dumps):
    code, summary, _, _ = judge(harness_cli, tmp_path, str(dumps / "torch-fault"))
    assert code == 1
    first = summary["first_failure"]
    assert first["call"] == "Functional.scaled_dot_product_attention.0.forward" and first["op"] == "attention"
    assert "torch_backend.py" in first["call_site"] and "F.scaled_dot_product_attention(" in first["call_site"]
    assert summary["failed"] == 1  # the ops after it are judged on their own inputs: they still pass


def test_text_table_names_the_first_failure_and_the_not_judged(harness_cli, tmp_path, dumps):
    run = harness_cli("judge", str(dumps / "torch-fault"), "--out", str(tmp_path / "t.jsonl"))
    assert run.exit_code == 1
    assert "first failure: Functional.scaled_dot_product_attention.0.forward (attention)" in run.output
    assert "not judged: " in run.output and "Torch.erf x1" in run.output


def test_ascend_sim_dump_judges_the_torch_npu_calls(harness_cli, tmp_path, dumps):
    code, summary, _, _ = judge(harness_cli, tmp_path, str(dumps / "sim"))
    assert code == 0
    calls = ops(summary)
    for name in (
        "NPU.npu_fused_infer_attention_score.0.forward",
        "NPU.npu_moe_gating_top_k_softmax.0.forward",
        "NPU.npu_grouped_matmul.0.forward",
        "NPU.npu_swiglu.0.forward",
        "NPU.npu_grouped_matmul.1.forward",
    ):
        assert calls[name]["status"] == "passed", name
    assert summary["not_judged"]["NPU.npu_moe_init_routing_v2"] == 1  # a permutation, no contract op


def test_planted_swiglu_fault_in_the_moe_is_found_at_npu_swiglu(harness_cli, tmp_path, dumps):
    code, summary, _, _ = judge(harness_cli, tmp_path, str(dumps / "sim-fault"))
    assert code == 1
    assert summary["first_failure"]["call"] == "NPU.npu_swiglu.0.forward" and summary["failed"] == 1


def test_against_a_source_dump(harness_cli, tmp_path, dumps):
    code, summary, records, _ = judge(harness_cli, tmp_path, str(dumps / "sim-fault"), "--against", str(dumps / "sim"))
    assert code == 1 and summary["first_failure"]["call"] == "NPU.npu_swiglu.0.forward"
    swiglu = next(r for r in records if r.case.op == "swiglu")
    assert swiglu.verdict.mode == "against dump:sim" and "_vs_dump:sim" in swiglu.reason
    assert swiglu.parity.baseline is not None and swiglu.parity.baseline.metrics.rel_l2 < 1e-6

    code, summary, _, _ = judge(harness_cli, tmp_path, str(dumps / "sim"), "--against", str(dumps / "sim"))
    assert code == 0 and summary["failed"] == 0
    # A port: the target's fused attention matched to the source's SDPA by op and order
    code, _, records, _ = judge(harness_cli, tmp_path, str(dumps / "sim"), "--against", str(dumps / "torch"))
    attention = next(r for r in records if r.case.op == "attention")
    assert attention.parity.details["dump"]["source_call"] == "Functional.scaled_dot_product_attention.0.forward"
    assert code == 0


def test_corrupt_or_partial_dumps_exit_2_naming_the_file(harness_cli, tmp_path, dumps):
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(dumps / "torch", dest)
        return next(dest.glob("step0/*"))

    proc = copy("no-json")
    (proc / "dump.json").unlink()
    code, _, _, out = judge(harness_cli, tmp_path, str(tmp_path / "no-json"))
    assert code == 2 and str(proc / "dump.json") in out and "missing" in out

    proc = copy("missing-pt")
    missing = proc / "dump_tensor_data" / "Functional.silu.0.forward.input.0.pt"
    missing.unlink()
    code, _, _, out = judge(harness_cli, tmp_path, str(tmp_path / "missing-pt"))
    assert code == 2 and str(missing) in out

    proc = copy("cut-pt")
    cut = proc / "dump_tensor_data" / "Functional.scaled_dot_product_attention.0.forward.input.0.pt"
    cut.write_bytes(cut.read_bytes()[:100])
    code, _, _, out = judge(harness_cli, tmp_path, str(tmp_path / "cut-pt"))
    assert code == 2 and str(cut) in out and "unreadable" in out

    code, _, _, out = judge(harness_cli, tmp_path, str(tmp_path / "not-there"))
    assert code == 2 and "not a directory" in out


def test_nothing_judgeable_exits_3(harness_cli, tmp_path, dumps):
    shutil.copytree(dumps / "torch", tmp_path / "erf")
    path = next((tmp_path / "erf").glob("step0/*/dump.json"))
    meta = json.loads(path.read_text())
    meta["data"] = {k: v for k, v in meta["data"].items() if k.startswith("Torch.erf")}
    path.write_text(json.dumps(meta))
    code, summary, _, _ = judge(harness_cli, tmp_path, str(tmp_path / "erf"))
    assert code == 3 and summary["judged"] == 0 and summary["not_judged"] == {"Torch.erf": 1}
    run = harness_cli("judge", str(tmp_path / "erf"), "--out", str(tmp_path / "e.jsonl"))
    assert run.exit_code == 3 and "nothing judgeable" in run.output


def test_per_op_verdict_agrees_with_harness_run(harness_cli, tmp_path):
    """The same attention case: `harness run` on torch-cpu, and a dump of torch-cpu's attention on the saved
    inputs judged by `harness judge`: the same verdict and the same error."""
    saved = tmp_path / "saved"
    run = harness_cli(
        "run", "-w", "attention.decode", "--preset", "tiny", "--shape", "gqa", "--dtype", "bfloat16", "-b",
        "torch-cpu", "--seeds", "0", "--distribution", "normal", "--parity-only", "--save-outputs", str(saved),
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    (record,) = run.records
    case_dir = next(saved.iterdir())
    (case_dir / "dims.json").write_text(json.dumps(record["shape_dims"]))
    make_dumps(tmp_path, ("attention", str(case_dir)))
    code, _, records, _ = judge(harness_cli, tmp_path, str(tmp_path / "attention"))
    (dumped,) = [r for r in records if r.case.op == "attention"]
    assert code == 0 and dumped.status == record["status"] == "passed"
    assert dumped.parity.metrics.rel_l2 == pytest.approx(record["parity"]["metrics"]["rel_l2"], rel=1e-9)
    assert dumped.parity.budget.rel_l2 == pytest.approx(record["parity"]["budget"]["rel_l2"])
