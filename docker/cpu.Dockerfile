# CPU image: installs the package with a CPU build of torch and runs the smoke suite.
#   docker build -f docker/cpu.Dockerfile -t harness-cpu .
#   docker run --rm -v "$PWD/results:/opt/harness/results" harness-cpu
# A plain `torch==X` from PyPI is the multi-GB CUDA build on x86_64 Linux; to get the small CPU wheel, point
# pip at PyTorch's CPU wheel index: --build-arg TORCH_PIP_ARGS="--index-url <cpu wheel index URL>".
FROM python:3.11-slim
# Extras: add ray for a Ray cluster node (harness run --executor ray): --build-arg EXTRAS=llm,onnx,ray
ARG EXTRAS="llm,onnx"

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_PIP_ARGS=""

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/harness

RUN pip install ${TORCH_PIP_ARGS} "${TORCH_SPEC}"

COPY pyproject.toml README.md ./
COPY harness ./harness
COPY backends ./backends
COPY models ./models
RUN pip install ".[${EXTRAS}]" && harness list

CMD ["harness", "run", "--suite", "smoke"]
