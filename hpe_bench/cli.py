"""What the ``hpe-bench`` tools (predict, score, show, ...) share: the user-error type and the way a tool ends."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable


class InputError(ValueError):
    """A user input (file, option, content) is unusable; the message names it. ``hpe-bench`` exits 2."""


def run_tool(prog: str, run: Callable[[Any], dict], args: Any) -> int:
    """``run(args)``; print its summary as JSON and return 0, or print an ``InputError`` as one line (no
    traceback) and return 2."""
    try:
        summary = run(args)
    except InputError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
