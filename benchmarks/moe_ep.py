"""Expert-parallel MoE timing: the whole `moe_ep` layer, its all_to_all traffic alone and its expert compute
alone, per rank, on one backend's device and process group.

    python benchmarks/moe_ep.py --device cpu --preset tiny                       # world 1 over gloo, anywhere
    python benchmarks/moe_ep.py --device cuda --backend cuda --preset small      # one GPU: world 1 over nccl
    torchrun --nproc-per-node 8 benchmarks/moe_ep.py --device cuda --backend cuda --preset real \
        --shape deepseek-v3-ep8 --out results/cuda/moe_ep.json

The traffic is timed on the very splits the routing of these inputs produces (the dispatch there and the
combine back: two all_to_all_single of T*k rows), the experts on the rows this rank receives; the layer's time
minus both is the routing, ordering and combine. Each figure is the median of --repeats calls after --warmup,
with the device synchronized and the ranks barriered around every call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from harness.backend import default_registry
from harness.expert_parallel import ExpertParallel, even_bounds, owners
from harness.models.dist_moe import DistMoe, _presets
from harness.models.moe import _weights
from harness.op_types import Experts, Routing


def _init(device: str) -> None:
    backend = "nccl" if device == "cuda" else "gloo"
    if "WORLD_SIZE" in os.environ:
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    else:  # one process: a world of one in-process
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _median_s(fn: Callable[[], object], sync: Callable[[], None], warmup: int, repeats: int) -> float:
    samples = []
    for i in range(warmup + repeats):
        dist.barrier()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--backend", default="torch-cpu", help="a harness backend on that device")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--shape", default="deepseek-v3")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON (rank 0)")
    args = parser.parse_args(argv)
    _init(args.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    shape = _presets()[args.preset][args.shape]
    if shape.world and shape.world != world:
        print(f"shape {args.shape} needs {shape.world} ranks; this run has {world}", file=sys.stderr)
        return 2
    backend = default_registry().create(args.backend)
    dtype = getattr(torch, args.dtype)
    host = _weights(shape, dtype, 0, "normal")
    w = {n: backend.to_device(t) for n, t in host.items()}
    group = dist.new_group(backend=backend.collective_backend or "gloo")
    args_ = DistMoe("b", {}).split_args(w, shape)
    layer = lambda: backend.moe_ep(*args_[0], **args_[1], group=group)  # noqa: E731
    _, routing = layer()
    tokens, held = even_bounds(shape.t, world), even_bounds(shape.dims.e, world)
    mine = slice(tokens[rank], tokens[rank + 1])
    flat = routing.ids[mine].reshape(-1)
    dest = owners(flat, held)
    _, send = ExpertParallel().plan(flat, dest, world)
    recv_t = torch.empty(world, dtype=torch.int64, device=flat.device)
    dist.all_to_all_single(recv_t, torch.tensor(send, dtype=torch.int64, device=flat.device), group=group)
    recv = recv_t.tolist()
    rows = w["x"].new_empty((sum(send), shape.dims.h))
    got = w["x"].new_empty((sum(recv), shape.dims.h))

    def traffic() -> None:
        dist.all_to_all_single(got, rows, recv, send, group=group)  # dispatch
        dist.all_to_all_single(rows, got, send, recv, group=group)  # combine back

    local = Experts(*(t[held[rank] : held[rank + 1]] for t in (w["w_gate"], w["w_up"], w["w_down"])))
    ids = torch.randint(0, max(held[rank + 1] - held[rank], 1), (got.shape[0], 1), device=got.device)
    ones = torch.ones(got.shape[0], 1, dtype=torch.float32, device=got.device)
    expert = lambda: backend.experts(got, local, Routing(ones, ids), None)  # noqa: E731
    sync = backend.synchronize
    figures = {
        "layer_s": _median_s(layer, sync, args.warmup, args.repeats),
        "all_to_all_s": _median_s(traffic, sync, args.warmup, args.repeats),
        "experts_s": _median_s(expert, sync, args.warmup, args.repeats) if got.shape[0] else 0.0,
        "rows_sent": sum(send),
        "rows_received": sum(recv),
    }
    every = [None] * world
    dist.all_gather_object(every, figures)
    if rank == 0:
        result = {
            "backend": args.backend,
            "shape": shape.describe(),
            "dtype": args.dtype,
            "world": world,
            "ranks": every,
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
