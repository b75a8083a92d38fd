"""Hostile inputs (issue 15): tensors given with --inputs, --model checkpoints, option values and names.

Each bad input is answered with one line naming it and what is accepted, exit 2 before anything runs, no
traceback, and the records already in the results file kept. The fuzz tests throw random option values and
random tensors at `harness run` and hold it to the same promise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from harness.cli import main
from harness.names import did_you_mean

TINY_ROUTE = ("-w", "moe.route", "-b", "torch-cpu", "--preset", "tiny", "--shape", "mixtral", "--dtype", "float32")
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def invoke(*args: str) -> tuple[int, str]:
    """`harness ARGS` in process; an exception escaping the command fails the test (it would be a traceback)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"harness {' '.join(args)} raised {result.exception!r}") from result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def earlier_records(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A results file's text from an earlier run: a refused run must leave it as it was."""
    out = tmp_path_factory.mktemp("earlier") / "earlier.jsonl"
    code, output = invoke("run", *TINY_ROUTE, "--parity-only", "--no-table", "--out", str(out))
    assert code == 0, output
    return out.read_text()


def refused(tmp_path: Path, earlier: str, *args: str) -> str:
    """Run `harness run ARGS --out FILE` over a file holding earlier records; expect exit 2 and one line that
    leaves the file as it was. Returns that line."""
    out = tmp_path / "results.jsonl"
    out.write_text(earlier)
    code, output = invoke("run", *args, "--parity-only", "--no-table", "--out", str(out))
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert out.read_text() == earlier
    return lines[0]


def tensors_file(tmp_path: Path, **tensors: torch.Tensor) -> str:
    path = tmp_path / "inputs.safetensors"
    save_file(tensors, str(path))
    return str(path)


# ----- --inputs: tensors that do not fit the contract -----


def _attention(b: int = 1, hq: int = 4, hkv: int = 2, sq: int = 1, skv: int = 8, d: int = 32) -> dict:
    return {"q": torch.randn(b, hq, sq, d), "k": torch.randn(b, hkv, skv, d), "v": torch.randn(b, hkv, skv, d)}


@pytest.mark.parametrize(
    ("tensors", "needles"),
    [
        ({**_attention(b=0), "kv_lens": torch.zeros(0, dtype=torch.int64)}, ("input q", "dimension B is 0")),
        ({**_attention(skv=0), "kv_lens": torch.zeros(1, dtype=torch.int64)}, ("input k", "dimension Skv is 0")),
        (_attention(d=0), ("input q", "dimension D is 0")),
        (_attention(hq=0, hkv=0), ("input q", "dimension Hq is 0")),
        ({**_attention(), "q": torch.randn(4, 1, 32)}, ("input q", "expected 4 dims [B,Hq,Sq,D]", "[4, 1, 32]")),
        ({**_attention(), "q": torch.ones(1, 4, 1, 32, dtype=torch.int64)}, ("input q", "floating dtype", "int64")),
        ({**_attention(), "kv_lens": torch.tensor([5.0])}, ("input kv_lens", "integer dtype", "float32")),
    ],
    ids=["batch0", "skv0", "d0", "heads0", "rank", "int-q", "float-kv_lens"],
)
def test_attention_inputs_that_do_not_fit_exit_2_naming_the_tensor(
    tmp_path: Path, earlier_records: str, tensors: dict, needles: tuple[str, ...]
) -> None:
    path = tensors_file(tmp_path, **tensors)
    line = refused(tmp_path, earlier_records, "-w", "attention.decode", "-b", "torch-cpu", "--inputs", path)
    assert all(n in line for n in needles), line
    assert "every dimension must be >= 1" in line or "expected" in line


def _mla(b: int = 1, h: int = 32, skv: int = 8, d: int = 576) -> dict:
    return {"q": torch.randn(b, h, 1, d), "kv": torch.randn(1, skv, d), "kv_lens": torch.tensor([skv] * b)}


@pytest.mark.parametrize(
    ("workload", "tensors", "needles"),
    [
        ("attention.mla_decode", _mla(b=2), ("input kv [1, 8, 576]", "q's B = 2")),
        ("attention.mla_decode", {**_mla(), "kv": torch.randn(1, 8, 512)}, ("kv [1, 8, 512]", "the same D")),
        ("attention.mla_decode", _mla(skv=0), ("input kv", "dimension Skv is 0")),
        ("attention.mla_decode", {**_mla(), "kv_lens": torch.tensor([9])}, ("kv_lens", "must lie in [0, 8]")),
        ("linear.projection", {"x": torch.randn(32, 320), "w": torch.randn(192, 321)}, ("[32, 320]", "[192, 321]")),
        ("linear.projection", {"x": torch.randn(0, 320), "w": torch.randn(192, 320)}, ("input x", "T is 0")),
        ("linear.projection", {"x": torch.randn(32), "w": torch.randn(192, 320)}, ("input x", "expected 2 dims")),
    ],
    ids=["mla-batch", "mla-d", "mla-skv0", "mla-lens", "linear-k", "linear-t0", "linear-rank"],
)
def test_mla_and_linear_inputs_that_do_not_fit_exit_2_naming_the_tensor(
    tmp_path: Path, earlier_records: str, workload: str, tensors: dict, needles: tuple[str, ...]
) -> None:
    path = tensors_file(tmp_path, **tensors)
    line = refused(tmp_path, earlier_records, "-w", workload, "-b", "torch-cpu", "--inputs", path)
    assert all(n in line for n in needles), line


@pytest.mark.parametrize(
    ("tensors", "needles"),
    [
        ({"logits": torch.randn(0, 8)}, ("input logits", "dimension T is 0")),
        ({"logits": torch.ones(4, 8, dtype=torch.int64)}, ("input logits", "floating dtype")),
        ({"logits": torch.randn(8)}, ("input logits", "expected 2 dims [T,E]")),
        ({"logits": torch.tensor(1.0)}, ("input logits", "expected 2 dims")),
    ],
    ids=["tokens0", "int", "rank1", "scalar"],
)
def test_route_inputs_that_do_not_fit_exit_2(
    tmp_path: Path, earlier_records: str, tensors: dict, needles: tuple[str, ...]
) -> None:
    path = tensors_file(tmp_path, **tensors)
    line = refused(
        tmp_path, earlier_records, "-w", "moe.route", "-b", "torch-cpu", "--shape", "mixtral", "--inputs", path
    )
    assert all(n in line for n in needles), line


def test_moe_layer_inputs_with_an_empty_or_misranked_tensor_exit_2(tmp_path: Path, earlier_records: str) -> None:
    from harness.workload import WorkloadRegistry

    layer = WorkloadRegistry.discover().get("moe.layer")
    tensors = layer.make_inputs(layer.shape("tiny", "qwen2-moe"), torch.float32, 0, "normal")
    assert "shared_w_gate" in tensors
    args = ("-w", "moe.layer", "-b", "torch-cpu", "--shape", "qwen2-moe", "--inputs")
    bad = {**tensors, "shared_w_gate": tensors["shared_w_gate"][0]}  # [H]: one dimension short
    line = refused(tmp_path, earlier_records, *args, tensors_file(tmp_path, **bad))
    assert "input shared_w_gate: expected 2 dims [Fs,H]" in line
    bad = {**tensors, "w_up": tensors["w_up"][:, :0]}  # F = 0
    line = refused(tmp_path, earlier_records, *args, tensors_file(tmp_path, **bad))
    assert "input w_up [E,F,H]: dimension F is 0" in line


def test_the_reference_answers_an_empty_batch_with_an_empty_output() -> None:
    """The library call, not the CLI: min() of no kv_lens used to raise a RuntimeError inside the check."""
    from harness import ops

    t = _attention(b=0)
    out = ops.attention(t["q"], t["k"], t["v"], causal=True, kv_lens=torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 4, 1, 32)


# ----- --model: checkpoints -----


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers", reason="--model needs transformers")
    from harness.models.llm_config import build_config, seeded_model

    path = tmp_path_factory.mktemp("ckpt") / "llama"
    seeded_model(build_config("llama3", "tiny"), seed=3).float().save_pretrained(str(path))
    return path


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "model"))


def test_config_that_is_not_a_json_object_exits_2(checkpoint: Path, tmp_path: Path, earlier_records: str) -> None:
    path = _copy(checkpoint, tmp_path)
    (path / "config.json").write_text("[1, 2, 3]")
    line = refused(tmp_path, earlier_records, "-w", "llm.*", "-b", "torch-cpu", "--model", str(path))
    assert f"{path / 'config.json'}: expected a JSON object" in line and "got a list" in line


def test_unsupported_architecture_is_named_with_the_supported_ones(
    checkpoint: Path, tmp_path: Path, earlier_records: str
) -> None:
    path = _copy(checkpoint, tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    line = refused(tmp_path, earlier_records, "-w", "llm.*", "-b", "torch-cpu", "--model", str(path))
    assert "'gpt2'" in line and "supported:" in line and "llama (llm.llama3)" in line and "mixtral" in line


def test_checkpoint_of_an_unselected_architecture_names_the_workload_that_takes_it(
    checkpoint: Path, tmp_path: Path, earlier_records: str
) -> None:
    line = refused(tmp_path, earlier_records, "-w", "llm.qwen3", "-b", "torch-cpu", "--model", str(checkpoint))
    assert "'llama'" in line and "-w llm.llama3" in line


def test_non_finite_weights_exit_2_naming_the_tensor(checkpoint: Path, tmp_path: Path, earlier_records: str) -> None:
    from safetensors.torch import load_file

    path = _copy(checkpoint, tmp_path)
    weights = next(path.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][0, :3] = float("nan")
    tensors[name][1, 0] = float("inf")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    line = refused(tmp_path, earlier_records, "-w", "llm.llama3", "-b", "torch-cpu", "--model", str(path))
    assert "non-finite weights" in line and f"{name}: 3 NaN, 1 Inf" in line


# ----- options -----


def test_a_quantized_dtype_no_selected_workload_takes_exits_2_naming_those_that_do(
    tmp_path: Path, earlier_records: str
) -> None:
    line = refused(tmp_path, earlier_records, "-w", "attention.prefill", "-b", "torch-cpu", "--dtype", "w8a8")
    assert "dtype w8a8: no selected workload computes in it (attention.prefill)" in line
    assert "linear.projection (w8a8, fp8, fp8-block)" in line and "moe.layer" in line


def test_layerwise_without_a_workload_with_layers_exits_2(tmp_path: Path, earlier_records: str) -> None:
    line = refused(tmp_path, earlier_records, "-w", "attention.decode,moe.*", "-b", "torch-cpu", "--layerwise")
    assert "--layerwise" in line and "llm.llama3" in line and "attention.decode" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--seeds=-1",), "--seeds: seeds must be >= 0, got -1"),
        (("--seeds", "0,x"), "--seeds '0,x': expected a comma list of integers"),
        (("--time-budget", "-1"), "--time-budget -1.0: expected a positive number"),
        (("--time-budget", "0"), "--time-budget 0.0: expected a positive number"),
        (("--time-budget", "nan"), "--time-budget nan: expected a positive number"),
        (("--budget", "rel_l2=-1"), "--budget 'rel_l2=-1': expected a finite number >= 0"),
        (("--budget", "atol=nan"), "--budget 'atol=nan': expected a finite number >= 0"),
        (("--against-ratio", "nan"), "--against-ratio nan: expected a finite number >= 1"),
    ],
)
def test_out_of_range_option_values_exit_2(
    tmp_path: Path, earlier_records: str, args: tuple[str, ...], needle: str
) -> None:
    assert needle in refused(tmp_path, earlier_records, *TINY_ROUTE, *args)


def test_suite_file_and_flags_refuse_negative_seeds_alike(tmp_path: Path, earlier_records: str) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text('workloads = ["moe.route"]\nseeds = [-1]\n')
    from_file = refused(tmp_path, earlier_records, "--suite", str(suite), "-b", "torch-cpu")
    from_flag = refused(tmp_path, earlier_records, *TINY_ROUTE, "--seeds=-1")
    assert from_file.endswith("seeds must be >= 0, got -1") and from_flag.endswith("seeds must be >= 0, got -1")


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (("--dtype", "fp16"), "did you mean 'float16'?"),
        (("--dtype", "bf16"), "did you mean 'bfloat16'?"),
        (("--dtype", "fp32"), "did you mean 'float32'?"),
        (("--dtype", "Float16"), "did you mean 'float16'?"),
        (("-b", "torch_cpu"), "did you mean 'torch-cpu'"),
        (("-w", "atention.*"), "did you mean 'attention.*'"),
        (("-w", "moe.rout"), "did you mean 'moe.route'"),
        (("--preset", "tinny"), "did you mean 'tiny'?"),
        (("--shape", "mixtrl"), "did you mean 'mixtral'?"),
        (("--suite", "smok"), "did you mean 'smoke'?"),
        (("--distribution", "stres"), "did you mean 'stress'?"),
        (("--budget", "rel_l=0.1"), "did you mean 'rel_l2'"),
    ],
)
def test_unknown_names_suggest_the_nearest_known_one(
    tmp_path: Path, earlier_records: str, args: tuple[str, ...], suggestion: str
) -> None:
    defaults = dict(zip(TINY_ROUTE[::2], TINY_ROUTE[1::2], strict=True))
    defaults.update(zip(args[::2], args[1::2], strict=True))
    line = refused(tmp_path, earlier_records, *(x for kv in defaults.items() for x in kv))
    assert line.endswith(suggestion) or f"{suggestion[:-1]}" in line, line
    assert repr(args[1]) in line or args[1] in line


def test_suite_file_names_get_suggestions_too(tmp_path: Path, earlier_records: str) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text('workloads = ["moe.route"]\ndtypes = ["bf16"]\n')
    line = refused(tmp_path, earlier_records, "--suite", str(suite))
    assert f"{suite}:2: key 'dtypes'" in line and "did you mean 'bfloat16'?" in line


def test_did_you_mean_stays_quiet_when_nothing_is_close() -> None:
    assert did_you_mean("xyz", ["float16", "float32"]) == ""
    assert did_you_mean("torch", ["cuda", "ascend"]) == ""
    assert did_you_mean("anything", []) == ""
    assert did_you_mean("fp16", ["float32"]) == ""  # an alias of a name not offered here is no suggestion


# ----- fuzz: random option values, random tensors -----

OPTION_VALUES = {
    "--dtype": ["float32", "bfloat16", "fp16", "float8", "", "float32,float16"],
    "--backend": ["torch-cpu", "cpu-reference", "torch_cpu", "nope", ""],
    "-w": ["moe.route", "moe.*", "moe.rout", "atention.*", "attention.decode", "[", ""],
    "--preset": ["tiny", "tinny", "huge", ""],
    "--shape": ["mixtral", "mixtrl", "gqa", ""],
    "--seeds": ["0", "0,1", "-1", "x", "", "1.5", "99999999999999999999"],
    "--time-budget": ["0.01", "-1", "0", "nan", "inf", "abc"],
    "--threads": ["1", "0", "auto", "-3", "x", "1.5"],
    "--budget": ["rel_l2=0.1", "rel_l2=-1", "nope=1", "rel_l2", "atol=nan", "rel_l2=inf", "max_outside=0"],
    "--backend-option": ["tf32=1", "torch-cpu:x=1", "=", "cuda:graphs=2", "nope:k=v", "graphs"],
    "--distribution": ["normal", "stress", "stres", "", "normal,stress"],
}

option_sets = st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.none(), max_size=len(OPTION_VALUES)).flatmap(
    lambda chosen: st.fixed_dictionaries({k: st.sampled_from(OPTION_VALUES[k]) for k in chosen})
)


def _valid_jsonl(path: Path) -> None:
    for line in path.read_text().splitlines():
        assert isinstance(json.loads(line), dict), line


@settings(max_examples=30, suppress_health_check=HEALTH)
@given(options=option_sets)
def test_fuzzed_run_options_never_crash(tmp_path: Path, options: dict[str, str]) -> None:
    base = {"-w": "moe.route", "--backend": "torch-cpu", "--preset": "tiny", "--shape": "mixtral", **options}
    out = tmp_path / "fuzz.jsonl"
    out.unlink(missing_ok=True)
    argv = [x for kv in base.items() for x in kv]
    code, output = invoke("run", *argv, "--parity-only", "--no-table", "--out", str(out))
    assert code in {0, 1, 2, 3}, output
    if code == 2:
        assert output.count("error:") + output.count("Error:") >= 1, output
        assert not out.exists() or out.read_text() == ""
    if out.exists():
        _valid_jsonl(out)


DIMS = st.integers(min_value=0, max_value=3)
FLOATS = [torch.float32] * 3 + [torch.float16]  # mostly the right kind, now and then not
INTS = [torch.int64] * 3 + [torch.int32]
ODD = [torch.bool, torch.float64, torch.int8]


@st.composite
def attention_files(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """q, k, v (and often kv_lens) of one random small geometry, sizes 0 included, each tensor sometimes given
    a rank or a dtype of its own: mostly near misses, some right."""
    b, hq, hkv, sq, skv, d = (draw(DIMS) for _ in range(6))
    shapes = {"q": [b, hq, sq, d], "k": [b, hkv, skv, d], "v": [b, hkv, skv, d]}
    tensors = {}
    for name, usual in shapes.items():
        own = draw(st.integers(0, 5)) == 0  # a rank of its own
        shape = draw(st.lists(DIMS, min_size=0, max_size=5)) if own else usual
        tensors[name] = torch.ones(shape).to(draw(st.sampled_from(FLOATS + ODD[:1])))
    if draw(st.booleans()):
        lens = draw(st.lists(st.integers(-1, 4), min_size=b, max_size=b + draw(st.integers(0, 1))))
        tensors["kv_lens"] = torch.tensor(lens, dtype=torch.int64).to(draw(st.sampled_from(INTS + ODD)))
    return tensors


@settings(max_examples=40, suppress_health_check=HEALTH)
@given(tensors=attention_files())
def test_fuzzed_attention_inputs_never_crash(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path = tensors_file(tmp_path, **tensors)
    out = tmp_path / "fuzz.jsonl"
    out.unlink(missing_ok=True)
    code, output = invoke(
        "run", "-w", "attention.decode", "-b", "torch-cpu", "--dtype", "float32", "--inputs", path,
        "--parity-only", "--no-table", "--out", str(out),
    )  # fmt: skip
    assert code in {0, 1, 2, 3}, output
    if out.exists():
        _valid_jsonl(out)
