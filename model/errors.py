"""User-facing errors: one line that names the problem and the fix, exit code 2, no traceback."""
from __future__ import annotations

import argparse
import errno
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., int | None])

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input from the user (config, file, flag). The message says what is wrong and how to fix it."""


# what a user can fix: room, a writable mount, permissions, quota, file size limits
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


class WriteFailed(UserError):
    """A file could not be written (disk full, read-only, no permission); `path` is the file's final name."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def reason(err: BaseException, folder: Path) -> str:
    """Why a write failed, in words: the OS's reason, or for errors without one (torch's stream writer) the free
    space left, which is what runs out in practice."""
    if isinstance(err, OSError) and err.errno is not None:
        return os.strerror(err.errno)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return str(err).splitlines()[0][:100] if str(err) else type(err).__name__
    return f"the write failed with {free / 2**20:.1f} MiB free on that file system"


def advice(err: BaseException) -> str:
    number = getattr(err, "errno", None)
    if number in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "write to a folder you may write to (--output, or output_dir for training)"
    return "free some space (or raise the quota) and run the command again"


def write_failed(err: BaseException, path: Path) -> WriteFailed:
    """The one-line error of a failed write of `path`: why, and what to do."""
    return WriteFailed(f"could not write {path}: {reason(err, path.parent)}; {advice(err)}", path)


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
