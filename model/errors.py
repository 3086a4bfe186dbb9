"""User-facing errors: one line that names the problem and the fix, exit code 2, no traceback."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., int | None])

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input from the user (config, file, flag). The message says what is wrong and how to fix it."""


class Interrupted(Exception):
    """Training stopped on a signal after saving a resumable checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def cli_entry(main: F) -> F:
    """Wrap a CLI `main` so a UserError (or a bad-argument exit) becomes `error: ...` and exit code 2.

    `--debug` anywhere on the command line (or `LDM_DEBUG=1`) re-raises with the full traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get("LDM_DEBUG") == "1"
        argv = [a for a in argv if a != "--debug"]
        try:
            return int(main(argv) or 0)
        except UserError as err:
            if debug:
                raise
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as err:  # a write the user can fix (full disk, read-only, permission): one line, exit 2
            from model.writes import WRITE_ERRNOS, write_failed

            if debug or err.errno not in WRITE_ERRNOS:
                raise
            print(f"error: {write_failed(err, Path(err.filename or '.'))}", file=sys.stderr)
            return EXIT_USAGE
        except Interrupted as stop:
            print(str(stop), file=sys.stderr)
            return stop.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper  # type: ignore[return-value]


class ArgParser(argparse.ArgumentParser):
    """argparse for the scripts, but a bad flag raises UserError (one line, exit 2) instead of printing usage."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see --help)")
