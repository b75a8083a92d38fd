"""The node's side of `--executor ray`: one Ray task runs one case group (cases sharing inputs, one device kind)
with the ordinary executors, in-process or `--isolate`, and yields each record as it ends, so the driver writes
it home before the next case starts and a worker that dies loses only the case in flight.

The task rebuilds the run the way an isolated child does (harness/isolate.py): the run's specification (suite,
options, plugins) comes as JSON, the registries are rebuilt from the node's own installation (a `--plugin` file
or a `--model` folder must exist at the same path on every node), the suite is planned again and the driver's
case keys picked from that plan. Imported only on Ray workers and by the driver when it submits.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RECORD, UNAVAILABLE = "record", "unavailable"  # what a task yields: (kind, value)


def node_facts() -> dict[str, Any]:
    """Where this task runs, as Ray names it: the node, its address, and the accelerators Ray gave the task."""
    import ray

    context = ray.get_runtime_context()
    return {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "accelerator_ids": {k: list(v) for k, v in context.get_accelerator_ids().items() if v},
    }


def run_group(spec_text: str, inputs: bytes | None, keys: list[str], isolate: bool) -> Iterator[tuple[str, Any]]:
    """Run the cases named by `keys` (one input group, in order) on this node; yields (RECORD, record dict) per
    case, each record's environment taken here plus `ray` (node_facts), then (UNAVAILABLE, {backend: reason}).
    A key missing from this node's plan yields nothing: the driver records it."""
    from safetensors.torch import load_file

    from harness.backend import default_registry
    from harness.executor import CaseExecutor, Executor
    from harness.isolate import IsolatedExecutor, _read_spec
    from harness.lazy import torch
    from harness.planning import Planner
    from harness.workload import WorkloadRegistry

    with tempfile.TemporaryDirectory(prefix="harness-ray-") as tmp:
        data = json.loads(spec_text)
        if inputs is not None:  # --inputs: the driver's file, shipped as bytes (the node need not have it)
            path = Path(tmp) / "inputs.safetensors"
            path.write_bytes(inputs)
            data["inputs_file"] = str(path)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(data))
        spec, options = _read_spec(spec_path)
        user_inputs = load_file(spec.inputs_file) if spec.inputs_file else None
        backends = default_registry(spec.plugins)
        planner = Planner(
            backends,
            WorkloadRegistry.discover(),
            model_path=options.model_path,
            user_inputs=user_inputs,
            layerwise=options.layerwise,
        )
        planned = {c.key: c for c in planner.plan(spec.suite)}
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        local = CaseExecutor(backends, planner, options, spec.run_id)
        executor: Executor = IsolatedExecutor(local, spec_path, spec.timeout_s) if isolate else local
        where = node_facts()
        cases = [planned[k] for k in keys if k in planned]
        prepared = executor.prepare(cases[0]) if cases else None  # the group's inputs, made once
        for case in cases:
            record = executor.execute(case, prepared)
            environment = {**(record.environment or {}), "ray": where}
            yield RECORD, dataclasses.replace(record, environment=environment).to_dict()
        yield UNAVAILABLE, executor.unavailable()
