# SPDX-License-Identifier: Apache-2.0
"""Every console script turns a failure into one line naming the problem and a hint (exit 2); the traceback only
with --debug."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _entry(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def test_every_console_script_is_covered():
    assert set(SCRIPTS) == {"zipvl", "zipvl-build", "zipvl-run", "zipvl-validate", "zipvl-bench", "zipvl-eval"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_unexpected_failure_is_one_line(script, monkeypatch, capsys):
    def explode(self, *args, **kwargs):
        return [][0]  # a real IndexError, raised from inside the script's main

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", explode)
    assert _entry(SCRIPTS[script])([]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"{script}: error: unexpected IndexError at ")
    assert "list index out of range" in lines[0] and "--debug" in lines[0]


@pytest.mark.parametrize("script", ["zipvl-run", "zipvl-eval"])
def test_debug_shows_the_traceback(script, monkeypatch, capsys):
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, *a, **k: [][0])
    assert _entry(SCRIPTS[script])(["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "IndexError" in err


@pytest.mark.parametrize("argv", [["zipvl-run", "{missing}", "--prompt", "hi"], ["zipvl-validate", "{missing}"]])
def test_user_error_in_a_real_process(argv, tmp_path):
    missing = str(tmp_path / "no-engine")
    module = SCRIPTS[argv[0]].split(":")[0]
    cmd = [sys.executable, "-c", f"import sys, {module} as m; sys.exit(m.main())",
           *[a.format(missing=missing) for a in argv[1:]]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"{argv[0]}: error: engine directory {missing} does not exist; build one with " \
                                  "`zipvl-build MODEL -o DIR`"
