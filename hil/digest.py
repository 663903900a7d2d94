"""sha256 of files: what signatures bind (models, eval data) and what deploys compare."""

from __future__ import annotations

import hashlib
from pathlib import Path

# (device, inode, size, mtime_ns) -> sha256: a file that has not changed is not hashed twice in one process.
_HASHED: dict[tuple[int, int, int, int], str] = {}


def sha256_file(path: Path) -> str:
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]
