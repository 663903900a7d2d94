"""Writing report files so that a reader (or a killed run) never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPORT_MODE = 0o644  # a report is for everyone who may read its folder (mkstemp alone would make it 0600)


def write_bytes_atomic(path: Path, data: bytes, *, keep_mode: bool = False) -> None:
    """Write to a temp file beside `path`, fsync, rename: readers see the old file or the new one.

    The file gets REPORT_MODE, or with keep_mode the mode of the file it replaces (a shared baseline
    someone made group-writable stays so).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if keep_mode and path.exists() else REPORT_MODE
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
