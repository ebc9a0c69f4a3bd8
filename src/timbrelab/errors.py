"""One error convention for every entry point: a one-line message, exit code 2."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


class TimbrelabError(Exception):
    """An error the user can act on. Its message names the file or key and what to do."""


class ConfigError(TimbrelabError):
    """A params.yaml / conf/ problem: a misspelt key, a wrong type, an impossible value."""


class AudioError(TimbrelabError):
    """An audio file that cannot be read, decoded or written."""


class DownloadError(TimbrelabError):
    """A network source that failed after retries."""


class Terminated(TimbrelabError):
    """The process was asked to stop (SIGTERM: a kill, a scheduler's pre-emption) and stopped cleanly: exit
    128 + 15, the shells' and schedulers' convention for "terminated", so nobody mistakes it for success."""

    exit_code = 128 + signal.SIGTERM


EXIT_USAGE = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name: what a one-line error quotes of a cause."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_main(fn: Callable[[], object], *, debug: bool | None = None) -> int:
    """Run ``fn`` and turn any exception into one line on stderr and exit code 2.

    ``--debug`` on the command line or ``TIMBRELAB_DEBUG=1`` re-raises instead, with the traceback.
    """
    if debug is None:
        debug = "--debug" in sys.argv or os.environ.get("TIMBRELAB_DEBUG") == "1"
    try:
        fn()
    except KeyboardInterrupt:
        print("timbrelab: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"timbrelab: terminated: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the whole point is one catch-all at the edge
        if debug:
            raise
        kind = "error" if isinstance(exc, TimbrelabError) else f"unexpected {type(exc).__name__}"
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"timbrelab: {kind}: {message} (rerun with --debug for a traceback)", file=sys.stderr)
        return EXIT_USAGE
    return 0
