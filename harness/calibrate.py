"""`harness calibrate`: the measured ceilings of a device (matmul peak per dtype, copy bandwidth), kept per device
so reports can say how close each case runs to its roofline.

Datasheet peaks are leads, not ceilings: the card at hand, its clocks and its libraries decide. Each figure is the
median of the backend's own timer over a large square matmul (2 n^3 FLOP), a device-to-device copy (bytes read
plus bytes written) or a reduction (bytes read). Files live under $HARNESS_CALIBRATION_DIR (default
~/.cache/harness/calibration), one per backend (or calibration group, e.g. every cuda-* backend) and device name.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.backend import DTYPES, Backend
from harness.lazy import torch
from harness.results import utc_now
from harness.timing import TimingConfig, measure

log = logging.getLogger(__name__)

CALIBRATION_ENV = "HARNESS_CALIBRATION_DIR"


@dataclass
class Calibration:
    backend: str
    device_name: str
    matmul_tflops: dict[str, float]  # math mode (Backend.math_modes: a dtype name, or e.g. float32_tf32) -> TFLOP/s
    copy_gbps: float  # device-to-device copy, bytes read + written per second / 1e9
    read_gbps: float = 0.0  # a reduction over the same buffer: bytes read per second / 1e9
    matmul_n: dict[str, int] = field(default_factory=dict)
    copy_bytes: int = 0
    measured_utc: str = ""
    environment: dict[str, Any] = field(default_factory=dict)

    def peak_tflops(self, dtype: str, mode: str | None = None) -> float | None:
        """The peak of the math mode a case ran in (Backend.math_mode), else of its dtype (a mode not measured)."""
        return self.matmul_tflops.get(mode or dtype) or self.matmul_tflops.get(dtype)

    @property
    def bandwidth_gbps(self) -> float:
        """The memory ceiling: the better of copy (read + write) and pure read, since read-mostly kernels (decode
        attention) stream faster than a copy does."""
        return max(self.copy_gbps, self.read_gbps)

    def roofline(self, dtype: str, flops: float, nbytes: float, seconds: float, mode: str | None = None) -> dict | None:
        """The case's floor time (compute or bandwidth, whichever is longer) and the measured time's share of it."""
        peak = self.peak_tflops(dtype, mode)
        if not peak or seconds <= 0 or not (flops or nbytes):
            return None
        compute_s = flops / (peak * 1e12) if flops else 0.0
        bandwidth = self.bandwidth_gbps
        memory_s = nbytes / (bandwidth * 1e9) if nbytes and bandwidth else 0.0
        floor = max(compute_s, memory_s)
        return {
            "peak_tflops": peak,
            "bandwidth_gbps": bandwidth,
            "bound": "compute" if compute_s >= memory_s else "memory",
            "floor_s": floor,
            "pct": 100.0 * floor / seconds,
        }


def calibration_dir() -> Path:
    return Path(os.environ.get(CALIBRATION_ENV) or Path.home() / ".cache" / "harness" / "calibration")


def calibration_path(backend: str, device_name: str, root: Path | None = None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() or "device"
    return (root or calibration_dir()) / f"{backend}--{slug}.json"


def load_calibration(backend: str, device_name: str, root: Path | None = None) -> Calibration | None:
    path = calibration_path(backend, device_name, root)
    if not path.is_file():
        return None
    try:
        return Calibration(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable calibration %s: %s", path, exc)
        return None


def save_calibration(cal: Calibration, root: Path | None = None, key: str | None = None) -> Path:
    path = calibration_path(key or cal.backend, cal.device_name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cal), indent=2) + "\n")
    return path


def calibrate(
    backend: Backend,
    *,
    matmul_n: int,
    copy_bytes: int,
    config: TimingConfig,
    small_n: dict[str, int] | None = None,
) -> Calibration:
    """Measure the backend's matmul peak in each of its math modes (one per dtype, and any the backend adds, such
    as TF32 on CUDA) and its copy bandwidth.

    `small_n` lowers n for modes a device computes slowly (float16 on a CPU without fp16 arithmetic)."""
    env = backend.environment()
    results: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for mode, math in backend.math_modes().items():
        n = (small_n or {}).get(mode, matmul_n)
        g = torch.Generator().manual_seed(0)
        a = backend.to_device(torch.randn(n, n, generator=g).to(DTYPES[math.dtype]))  # random data: zeros run faster
        b = backend.to_device(torch.randn(n, n, generator=g).to(DTYPES[math.dtype]))
        with math.context():
            m = measure(lambda a=a, b=b: a @ b, backend.timer(config), config)
        results[mode] = 2.0 * n**3 / (m.stats.median_ns * 1e-9) / 1e12
        sizes[mode] = n
        log.info("%s matmul n=%d: %.1f TFLOP/s", mode, n, results[mode])
        del a, b
    words = copy_bytes // 4  # float32 words: a byte-wise copy kernel does not reach the bandwidth
    src = backend.to_device(torch.ones(words, dtype=torch.float32))
    dst = backend.to_device(torch.zeros(words, dtype=torch.float32))
    m = measure(lambda: dst.copy_(src), backend.timer(config), config)
    copy_gbps = 2.0 * words * 4 / (m.stats.median_ns * 1e-9) / 1e9
    m = measure(src.sum, backend.timer(config), config)
    read_gbps = words * 4 / (m.stats.median_ns * 1e-9) / 1e9
    return Calibration(
        backend=backend.name,
        device_name=str(env.get("device_name") or backend.device),
        matmul_tflops=results,
        copy_gbps=copy_gbps,
        read_gbps=read_gbps,
        matmul_n=sizes,
        copy_bytes=copy_bytes,
        measured_utc=utc_now(),
        environment=env,
    )
