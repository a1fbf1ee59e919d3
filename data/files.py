"""Writing local files whole: readers see the old file or the new one, never half of either.

Every writer goes through `atomic_path`: it yields a temporary name in the target's folder (same
file system, so the final `os.replace` is atomic) and removes the temporary on any error.
Remote outputs (gs://, s3://) go through Beam's file systems instead (pipeline/beam_jobs.py), where
an object is written whole by the store itself.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Iterator, Sequence


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path`; moves it onto `path` when the block succeeds.

    `suffix` keeps an extension on the temporary name for writers that choose the format by
    it (matplotlib's savefig). The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}"  # see TEMPORARY_NAME
    # Created like open() creates files (mode 0o666 less the umask); mkstemp's 0o600 would leave
    # datasets and exports readable by their owner only.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# The names atomic_path gives its temporaries; one left behind means a writer was killed mid-write.
TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.\w+)?$")


def leftover_temporaries(folder) -> list[Path]:
    """The temporaries of atomic_path in `folder` (not its subfolders): writes cut short by a kill."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and TEMPORARY_NAME.match(p.name))


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json(path, value, indent: int = 2, sort_keys: bool = False) -> Path:
    """`value` as JSON (with a final newline)."""
    return write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def write_csv(path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """A whole CSV with a header row; a row with a key outside `columns` raises ValueError."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="raise")
            writer.writeheader()
            writer.writerows(rows)
    return Path(path)


def append_csv_rows(path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Appends rows to a CSV log, writing the header when the file is new (logs grow, so no rename)."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def save_figure(figure, path, dpi: int = 120) -> Path:
    """Saves a matplotlib figure as `path` (format from its extension) and closes it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=Path(path).suffix) as temporary:
        figure.savefig(temporary, dpi=dpi)
    plt.close(figure)
    return Path(path)


# Staging folders of whole-directory outputs, named after host and process so that the next run
# can tell a killed job's leftovers from a running job's folder.
def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def staging_path(parent: str, prefix: str) -> str:
    """A fresh hidden working folder name in `parent`: PREFIX.tmp-HOST-PID-XXXXXXXX."""
    return os.path.join(parent, f"{prefix}.tmp-{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_staging(parent: str, prefix: str) -> list:
    """Removes the `staging_path(parent, prefix)` folders (and their '.old' trash) left by killed
    jobs: those made on this host by a process that no longer runs. Returns the removed paths.
    Remote filesystems are left alone (no process to ask about)."""
    if "://" in str(parent) or not os.path.isdir(parent):
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{8}}(?:\.old)?$")
    removed = []
    for name in sorted(os.listdir(parent)):
        match = pattern.match(name)
        if match and match["host"] == host_name() and not process_alive(int(match["pid"])):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
    return removed
