"""Built-in workloads (attention; MoE and LLMs as they land), registered through `harness.workloads`."""
