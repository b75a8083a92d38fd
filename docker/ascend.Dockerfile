# Ascend image: CANN toolkit + torch + torch_npu + harness, for Atlas A2 (910B) / A3 (910C) machines.
#   docker build -f docker/ascend.Dockerfile -t harness-ascend .
#   docker run --rm --device /dev/davinci0 --device /dev/davinci_manager --device /dev/devmm_svm \
#     --device /dev/hisi_hdc -v /usr/local/dcmi:/usr/local/dcmi -v /usr/local/Ascend/driver:/usr/local/Ascend/driver \
#     -v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi -v "$PWD/results:/opt/harness/results" harness-ascend
# The CANN base image must match the host driver; pick the tag for your SoC and CANN release.
ARG CANN_IMAGE=ascendai/cann:8.3.rc1-910b-ubuntu22.04-py3.11
FROM ${CANN_IMAGE}
# Extras: add ray for a Ray cluster node (harness run --executor ray): --build-arg EXTRAS=llm,ray
ARG EXTRAS="llm"

# torch and torch_npu are released in matching pairs: keep the two versions equal.
ARG TORCH_VERSION=2.8.0
ARG TORCH_NPU_VERSION=2.8.0

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/harness

RUN pip install "torch==${TORCH_VERSION}" "torch-npu==${TORCH_NPU_VERSION}" "numpy<2.3" pyyaml decorator attrs psutil

COPY pyproject.toml README.md ./
COPY harness ./harness
COPY backends ./backends
COPY models ./models
RUN pip install ".[${EXTRAS}]"

# The CANN environment must be sourced for torch_npu to import (libhccl.so and friends).
SHELL ["/bin/bash", "-c"]
ENTRYPOINT ["/bin/bash", "-c", "source /usr/local/Ascend/ascend-toolkit/set_env.sh && exec \"$@\"", "--"]
CMD ["harness", "run", "--suite", "ci", "-b", "cpu-reference,ascend", "--dtype", "float16,bfloat16"]
