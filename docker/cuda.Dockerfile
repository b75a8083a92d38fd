# CUDA image: torch with CUDA on NVIDIA's CUDA runtime base, the package, and the GPU suites.
#   docker build -f docker/cuda.Dockerfile -t harness-cuda .
#   docker run --rm --gpus all -v "$PWD/results:/opt/harness/results" harness-cuda
#   docker run --rm --gpus all harness-cuda harness calibrate -b cuda
# The torch wheel from PyPI for x86_64 Linux carries its own CUDA libraries (cuBLAS, cuDNN) and Triton; the base
# image only has to provide a driver-compatible CUDA runtime. The results in results/cuda/ were made with torch
# 2.11.0+cu130 on an H100 (driver 580); pick a TORCH_SPEC whose CUDA the host driver supports.
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04
# Extras: add ray for a Ray cluster node (harness run --executor ray): --build-arg EXTRAS=llm,onnx,ray
ARG EXTRAS="llm,onnx"

ARG TORCH_SPEC="torch==2.11.0"
ARG TORCH_PIP_ARGS=""

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 HARNESS_CALIBRATION_DIR=/opt/harness/results/calibration
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/harness

RUN pip install ${TORCH_PIP_ARGS} "${TORCH_SPEC}" nvidia-ml-py

COPY pyproject.toml README.md ./
COPY harness ./harness
COPY backends ./backends
COPY models ./models
COPY benchmarks ./benchmarks
RUN pip install ".[${EXTRAS}]" && harness list

# The default job: the device's ceilings, then the CI suite on the GPU beside the float64 reference.
CMD ["sh", "-c", "harness calibrate -b cuda && harness run --suite ci -b cpu-reference,cuda"]
