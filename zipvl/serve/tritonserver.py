# SPDX-License-Identifier: Apache-2.0
"""Run the Triton Inference Server bundled in the ``nvidia-pytriton`` wheel on a model repository.

Only the wheel's binaries are used (tritonserver 2.51, the Python backend and its per-Python-version stubs), not
PyTriton's Python API, so its ``numpy<2`` pin does not apply (the backend passes tensors through DLPack, see
:mod:`.backend`). Two things make the stub run this interpreter's environment: ``LD_LIBRARY_PATH`` starts with
this interpreter's LIBDIR (else the stub links the system ``libpython3.11.so.1.0`` of another patch release and
fails with ``'_thread.RLock' object has no attribute '_recursion_count'``), and ``PATH`` starts with this
interpreter's bin directory (the embedded interpreter finds its ``pyvenv.cfg`` there, hence this venv's
site-packages; it ignores PYTHONPATH).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

from ..errors import ZipVLError


def triton_root() -> Path:
    spec = find_spec("pytriton")
    root = Path(spec.submodule_search_locations[0]) / "tritonserver" if spec else None
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise ZipVLError("zipvl serve needs Triton Inference Server from the nvidia-pytriton wheel: install "
                         "requirements/serve.lock (bash scripts/install.sh does)")
    return root


def backend_dir(workdir: Path) -> Path:
    """A backends/ folder whose python backend has the stub built for this Python version (links, no copies)."""
    root, ver = triton_root(), f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ZipVLError(f"the bundled Triton Python backend has no stub for Python {ver}")
    python = workdir / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = python / src.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)
    return workdir / "backends"


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = ":".join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    return env


def _die_with_parent() -> None:
    """Linux: tritonserver gets SIGTERM when its parent dies, however the parent ends (kill -9 included)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class TritonServer:
    """One tritonserver process on loopback ports; :meth:`stop` always ends it."""

    def __init__(self, repository: Path, workdir: Path, http_port: int, grpc_port: int, metrics_port: int,
                 log_path: Path | None = None):
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log_path = log_path or workdir / "tritonserver.log"
        cmd = [str(triton_root() / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backend_dir(workdir)}", f"--http-port={http_port}",
               f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}", "--http-address=127.0.0.1",
               "--grpc-address=127.0.0.1", "--allow-metrics=true", "--allow-gpu-metrics=false",
               "--exit-on-error=true", "--log-verbose=0"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=server_env(),
                                     start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509 - before any thread

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ZipVLError(f"tritonserver exited ({self.proc.returncode}) while loading: "
                                 f"{self.last_error()} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise ZipVLError(f"tritonserver not ready after {timeout:.0f} s (log: {self.log_path})")

    def last_error(self) -> str:
        lines = [x for x in Path(self.log_path).read_text(errors="replace").splitlines() if x.startswith("E")]
        return lines[-1].split("]", 1)[-1].strip() if lines else "no error in the log"

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # the server leads its own session: a Python-backend stub it left behind (found orphaned after a test run)
        # is in its process group and goes with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
