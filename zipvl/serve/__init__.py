# SPDX-License-Identifier: Apache-2.0
"""zipvl.serve: serve a zipvl engine on Triton Inference Server (the server bundled in the ``nvidia-pytriton``
wheel, Python backend, decoupled = token streaming) with an OpenAI-compatible gateway in front.

::

    client -> gateway (FastAPI, --port: /v1/chat/completions, /v1/models, /health, /ready, /metrics)
           -> Triton gRPC stream (KServe v2) -> model "zipvl" (Python backend: zipvl.serve.backend)
           -> zipvl.runtime.batching.Scheduler (in-flight batching) -> zipvl.runtime.Engine (ONNX Runtime)

The model repository (:mod:`.repository`) is the same one NVIDIA's Triton containers load.
"""
