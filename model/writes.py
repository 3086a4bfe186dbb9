"""Writing files so that a full disk or a read-only folder loses nothing and says so in one line.

Every file goes to a temporary sibling first and is renamed over its final name only when whole, so a failure never
leaves a partial file under a final name; the temporary is removed on the way out. The errors a user can act on
(no space, read-only file system, no permission, quota) become `model.errors.WriteFailed`, a one-line `UserError`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from model.errors import WRITE_ERRNOS, UserError, reason, write_failed

def atomic_write(path: Path, write: Callable[[Path], None], sync: bool = False) -> Path:
    """`write(tmp)` to a temporary sibling, then rename it to `path`; the temporary is removed on any failure.

    OS and writer errors (torch's stream writer reports a full disk as a RuntimeError) become `WriteFailed`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if isinstance(err, OSError) and err.errno not in WRITE_ERRNOS and not isinstance(err, PermissionError):
            raise
        raise write_failed(err, path) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    """A text file (JSON, Markdown, CSV), written atomically."""
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def save_npz(path: Path, **arrays) -> Path:
    """np.savez_compressed, written atomically (through a file object: numpy would append .npz to the name)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(Path(path), write)


def missing_folders(folder: Path) -> list[Path]:
    """The folders on the way to `folder` that do not exist yet, outermost first."""
    return [d for d in reversed([folder, *folder.parents]) if not d.exists()]


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders of `missing_folders` again, innermost first, as long as they are empty."""
    for d in reversed(folders):
        try:
            d.rmdir()
        except FileNotFoundError:
            continue  # already removed (by a concurrent start of the same command): go on outwards
        except OSError:
            return


PROBE_TRIES = 5  # tries of the probe and the run lock when a concurrent start removes the folder under them


def check_writable(folder: Path, what: str = "--output") -> None:
    """Write a probe file into `folder` (created for the probe and removed again): a read-only mount, a folder
    without permission or a full disk is found before any work starts, as a one-line UserError naming `what` to
    change. Nothing is left behind."""
    folder = Path(folder).absolute()
    created = missing_folders(folder)
    try:
        for tries_left in reversed(range(PROBE_TRIES)):
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
                    return
            except FileNotFoundError:
                # the folder went between mkdir and the probe: the other tasks of an srun start the same command,
                # and one that made the folder for its probe removes it again; make it once more
                if not tries_left:
                    raise
    except OSError as err:
        raise UserError(f"cannot write to {folder}: {reason(err, folder)}; choose a writable {what}") from err
    finally:
        remove_if_empty(created)
