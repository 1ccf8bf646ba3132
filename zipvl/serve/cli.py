# SPDX-License-Identifier: Apache-2.0
"""``zipvl serve ENGINE``: Triton Inference Server hosting the engine (in-flight batching, token streaming) behind
an OpenAI-compatible gateway on ``--port``; ``--export-repository DIR`` writes the Triton model repository instead."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from ..console import add_debug_flag, entry_point
from ..errors import ZipVLError

log = logging.getLogger("zipvl.serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zipvl serve", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("engine", help="engine directory (zipvl-build)")
    p.add_argument("--port", type=int, default=8000, help="gateway port (OpenAI API, /health, /ready, /metrics)")
    p.add_argument("--host", default="127.0.0.1", help="gateway address (0.0.0.0 in a container)")
    p.add_argument("--name", default="zipvl", help="served model name (the OpenAI 'model' field)")
    p.add_argument("--instances", type=int, default=1, help="Triton model instances (engine replicas)")
    p.add_argument("--max-queue", type=int, default=64, help="queued requests per instance before HTTP 429")
    p.add_argument("--max-running", type=int, help="requests decoded together per instance (default: the engine's "
                   "max_batch; more wait in the queue)")
    p.add_argument("--kv-budget", type=float, metavar="MIB", help="KV-cache MiB the running requests may reserve")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request deadline, seconds")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per instance")
    p.add_argument("--triton-ports", type=lambda s: [int(x) for x in s.split(",")], metavar="HTTP,GRPC,METRICS",
                   help="Triton's own ports (default: free loopback ports)")
    p.add_argument("--export-repository", metavar="DIR", help="write the Triton model repository (engine copied) "
                   "and exit")
    add_debug_flag(p)
    return p


def _options(args):
    from .repository import ServeOptions

    if args.instances < 1 or args.max_queue < 1 or args.timeout <= 0 or (args.max_running or 1) < 1:
        from ..errors import ZipVLConfigError

        raise ZipVLConfigError("--instances, --max-queue and --max-running must be >= 1 and --timeout > 0")
    return ServeOptions(instances=args.instances, max_queue=args.max_queue, max_running=args.max_running,
                        kv_budget_mib=args.kv_budget, timeout_s=args.timeout, threads=args.threads)


def _exit(signum, frame):
    raise SystemExit(0)


def _processor(engine_dir: Path, manifest: dict):
    if not manifest.get("processor"):
        return None
    from transformers import AutoProcessor, AutoTokenizer

    path = engine_dir / manifest["processor"]
    try:
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return AutoTokenizer.from_pretrained(path)


@entry_point("zipvl serve")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..runtime.manifest import load_manifest
    from .repository import write_repository

    engine = Path(args.engine).resolve()
    manifest = load_manifest(engine, verify_hashes=False)
    options = _options(args)
    if args.export_repository:
        out = write_repository(engine, args.export_repository, args.name, options, copy=True)
        print(f"Triton model repository: {out} (model {args.name!r}; tritonserver --model-repository={out})")
        return 0
    try:
        import uvicorn

        from .gateway import GatewayConfig, create_app
    except ImportError as e:  # the serving packages are their own lock, installed by scripts/install.sh
        raise ZipVLError(f"zipvl serve needs the serving packages ({e.name} is missing): "
                         "pip install --no-deps -r requirements/serve.lock (scripts/install.sh does)") from e
    from .tritonserver import TritonServer

    work = Path(tempfile.mkdtemp(prefix="zipvl-serve-"))
    server = None
    try:
        repo = write_repository(engine, work / "repository", args.name, options)
        http, grpc, metrics = args.triton_ports or (free_port(), free_port(), free_port())
        server = TritonServer(repo, work, http, grpc, metrics)
        log.info("zipvl serve: starting Triton (HTTP %d, gRPC %d, metrics %d; log %s)", http, grpc, metrics,
                 server.log_path)
        server.wait_ready()
        cfg = GatewayConfig(model=args.name, triton_grpc=f"127.0.0.1:{grpc}",
                            triton_metrics=f"http://127.0.0.1:{metrics}/metrics", triton_model=args.name,
                            processor=_processor(engine, manifest), max_sequence=manifest["limits"]["max_sequence"])
        log.info("zipvl serve: ready on http://%s:%d (model %r)", args.host, args.port, args.name)
        # uvicorn re-raises the SIGTERM it caught once it has shut down; make that an exit that runs `finally`
        # (stopping Triton) instead of the default disposition, which would end the process on the spot.
        signal.signal(signal.SIGTERM, _exit)
        uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="warning",
                    timeout_graceful_shutdown=5)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
