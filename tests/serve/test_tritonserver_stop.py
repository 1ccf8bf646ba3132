# SPDX-License-Identifier: Apache-2.0
"""``TritonServer.stop`` ends the server's whole process group: a child it leaves behind (a Python-backend stub was
once found orphaned after a test run) does not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from zipvl.serve.tritonserver import TritonServer


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_ends_children_the_server_leaves_behind(tmp_path):
    server = TritonServer.__new__(TritonServer)  # the process handling only: a shell stands in for tritonserver
    server.proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    server._log = open(tmp_path / "log", "w")  # noqa: SIM115 - stop() closes it
    time.sleep(0.3)
    assert _group_alive(server.proc.pid)
    server.stop(timeout=5)
    deadline = time.monotonic() + 5
    while _group_alive(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL is delivered asynchronously; zombies are reaped by init
    alive = _group_alive(server.proc.pid)
    if alive:  # clean up before failing
        os.killpg(server.proc.pid, signal.SIGKILL)
    assert not alive and server._log.closed
