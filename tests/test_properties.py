"""Property-based tests (hypothesis) of the parity metrics and of suite parsing."""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import parity
from harness.suites import SuiteError, load_suite_file

BUDGET = parity.budget_for("bfloat16", 64)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
any_float = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf))
shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@st.composite
def tensors(draw, elements=finite):
    rows, cols = draw(shapes)
    values = draw(st.lists(elements, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float64).reshape(rows, cols)


@given(tensors())
def test_identical_tensors_have_zero_error(ref: torch.Tensor) -> None:
    m = parity.compare(ref.clone(), ref, BUDGET)
    assert m.max_abs == 0 and m.rel_l2 == 0 and m.worst_row_rel_l2 == 0 and m.frac_outside == 0
    assert m.nonfinite_mismatch == 0


@given(tensors(), tensors(), st.floats(min_value=1e-3, max_value=1e3))
def test_relative_metrics_are_scale_invariant(ref: torch.Tensor, noise: torch.Tensor, scale: float) -> None:
    if noise.shape != ref.shape or float(ref.abs().max()) == 0:
        return
    out = ref + 1e-3 * noise
    a, b = parity.compare(out, ref, BUDGET), parity.compare(out * scale, ref * scale, BUDGET)
    assert a.rel_l2 == pytest.approx(b.rel_l2, rel=1e-6, abs=1e-12)
    assert a.worst_row_rel_l2 == pytest.approx(b.worst_row_rel_l2, rel=1e-6, abs=1e-12)
    assert a.cosine == pytest.approx(b.cosine, rel=1e-9, abs=1e-12)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(tensors(any_float), tensors(any_float))
def test_no_exception_on_any_mix_of_finite_and_nonfinite_values(out: torch.Tensor, ref: torch.Tensor) -> None:
    if out.shape != ref.shape:
        out = torch.zeros_like(ref)
    m = parity.compare(out, ref, BUDGET)
    verdict = parity.judge(m, BUDGET)
    assert isinstance(verdict.passed, bool)
    if bool((~torch.isfinite(out) & torch.isfinite(ref)).any()):
        assert not verdict.passed and "nonfinite" in verdict.reason


toml_text = st.text(alphabet=string.printable, max_size=200)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(text=toml_text)
def test_suite_parsing_never_crashes_on_arbitrary_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    try:
        load_suite_file(path)
    except SuiteError as exc:
        assert str(path) in str(exc)


keys = st.sampled_from(["workloads", "dtypes", "presets", "shapes", "backends", "seeds", "inputs", "name", "bogus"])
values = st.one_of(
    st.integers(-3, 5),
    st.text(string.ascii_lowercase, max_size=8),
    st.lists(st.integers(-1, 3), max_size=3),
    st.lists(st.sampled_from(["float32", "bfloat16", "int8", "normal", "attention.*"]), max_size=3),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(entries=st.dictionaries(keys, values, max_size=4))
def test_suite_errors_name_the_key_and_its_line(tmp_path: Path, entries: dict) -> None:
    def literal(v):
        if isinstance(v, list):
            return "[" + ", ".join(literal(x) for x in v) + "]"
        return f'"{v}"' if isinstance(v, str) else str(v)

    path = tmp_path / "s.toml"
    path.write_text("".join(f"{k} = {literal(v)}\n" for k, v in entries.items()))
    try:
        suite = load_suite_file(path)
    except SuiteError as exc:
        message = str(exc)
        named = [k for k in entries if f"'{k}'" in message]
        assert named, message
        line = list(entries).index(named[0]) + 1
        assert f"s.toml:{line}:" in message
    else:
        assert "bogus" not in entries
        if "dtypes" in entries:
            assert all(d in ("float32", "bfloat16") for d in suite.dtypes)
