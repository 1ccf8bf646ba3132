# SPDX-License-Identifier: Apache-2.0
# GPU image for zipvl's TensorRT path: TensorRT 10 + trtexec (NGC), a CUDA build of torch, zipvl, and the native
# libraries built with CMake. Runs the GPU / TensorRT tests by default.
#
#   docker build -t zipvl-trt .
#   docker run --gpus all --rm zipvl-trt                       # pytest -m "gpu or trt"
#   docker run --gpus all --rm -it zipvl-trt bash              # trtexec, python -m zipvl.plugins.tensorrt_build ...
#
# A base image that already has torch (e.g. nvcr.io/nvidia/pytorch:25.10-py3 plus TensorRT) keeps its own build:
#   docker build --build-arg BASE_IMAGE=... -t zipvl-trt .
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_SPEC=torch==2.13.0
ARG CUDA_ARCHS="80;90"

# The NGC TensorRT image keeps the real headers here; CMake then does not need the kernel-lens copy.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TENSORRT_INCLUDE_DIR=/usr/include/x86_64-linux-gnu \
    ZIPVL_PLUGIN_DIR=/opt/zipvl-build

RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake ninja-build g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/zipvl

# torch before zipvl, and only when the image has none, so the image's own torch build is kept.
RUN python -c "import torch" 2>/dev/null \
    || python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY zipvl ./zipvl
COPY plugins/CMakeLists.txt ./plugins/CMakeLists.txt
COPY plugins/common ./plugins/common
COPY plugins/cpu ./plugins/cpu
COPY plugins/ZipVLTokenSelect ./plugins/ZipVLTokenSelect
COPY plugins/ZipVLSparseAttention ./plugins/ZipVLSparseAttention
COPY scripts ./scripts
COPY tests ./tests
COPY docs ./docs

# The CPU lock's exact pins for everything but torch (the CUDA build above) and TensorRT-RTX (the image has TensorRT).
RUN grep -v -E '^(torch|tensorrt[-_]rtx)' requirements/cpu.lock > /tmp/gpu.lock \
    && python -m pip install --no-cache-dir --no-deps -r /tmp/gpu.lock \
    && python -m pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && python scripts/check_env.py --ignore torch \
    && python -c "import tensorrt, torch; print('TensorRT', tensorrt.__version__, '| torch', torch.__version__)"

# libzipvl_cpu.so, libzipvl_kernels.so and libzipvl_plugins.so into $ZIPVL_PLUGIN_DIR (sm_80 + sm_90 by default).
RUN bash scripts/build_plugins.sh --build-dir "${ZIPVL_PLUGIN_DIR}" --cuda-archs "${CUDA_ARCHS}"

CMD ["python", "-m", "pytest", "-m", "gpu or trt", "-ra", "tests"]
