# SPDX-License-Identifier: Apache-2.0
"""What every console script does with a failure: one line naming the problem and a hint, exit 2.

``--debug`` (any position) or ``ZIPVL_DEBUG=1`` shows the traceback instead. zipvl's own errors (``ZipVLError``)
and file-system errors are the user's to fix and print as they are; anything else is unexpected and the line says
where it was raised.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path

from .errors import ZipVLError

DEBUG_FLAG = "--debug"
_PACKAGE_ROOT = Path(__file__).resolve().parent


def add_debug_flag(parser) -> None:
    """Show ``--debug`` in ``--help``; the flag itself is taken out of argv before parsing (see :func:`entry_point`)."""
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of a failure")


def _where(exc: BaseException) -> str:
    """Innermost zipvl frame of the traceback (else the innermost frame): file:line in function."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(_PACKAGE_ROOT)]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    path = Path(frame.filename)
    shown = path.resolve().relative_to(_PACKAGE_ROOT.parent) if ours else path.name
    return f"{shown}:{frame.lineno} in {frame.name}"


def describe_failure(prog: str, exc: BaseException) -> str:
    """The one line printed for ``exc``."""
    message = " ".join(str(exc).split()) or "(no message)"
    if isinstance(exc, ZipVLError):
        return f"{prog}: error: {message}"
    if isinstance(exc, OSError):
        return f"{prog}: error: {message} (check the path and its permissions)"
    if isinstance(exc, MemoryError):
        return f"{prog}: error: out of memory (try a shorter input, a smaller batch or fewer threads)"
    return (f"{prog}: error: unexpected {type(exc).__name__} at {_where(exc)}: {message} "
            f"(hint: rerun with {DEBUG_FLAG} for the traceback and report it as a zipvl bug)")


def entry_point(prog: str):
    """Decorate ``main(argv) -> int`` so that no traceback reaches the user unless they ask for it."""

    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = DEBUG_FLAG in argv or os.environ.get("ZIPVL_DEBUG", "") not in ("", "0")
            argv = [a for a in argv if a != DEBUG_FLAG]
            try:
                return main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except Exception as exc:  # noqa: BLE001 - the one place failures become a line
                if debug:
                    traceback.print_exc()
                print(describe_failure(prog, exc), file=sys.stderr)
                return 2

        return run

    return wrap
