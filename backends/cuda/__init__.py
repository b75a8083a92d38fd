"""The CUDA backend: torch on an NVIDIA GPU with the fastest correct kernel per case (backend.py), its attention
dispatch (attention.py), grouped-GEMM MoE (moe.py) and GPU timing (timing.py)."""
