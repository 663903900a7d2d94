"""The Python of a non-root emulated device: a venv at the path devices.toml gives, as on a Jetson.

A real board's onnxruntime usually lives in a venv, and its `python3` on PATH lacks it. The lab
makes that venv from a system interpreter every user can run (the lab's own may sit under a home
directory only root can enter), and puts numpy and onnxruntime into it from the lab's environment:
hard links where the filesystem allows, else copies. A venv is only ever replaced or removed when
its marker file says this lab made it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import site
import stat
import subprocess
import sys
from pathlib import Path

from hil.config import LAB_VENV_ROOT, LabConfig
from hil.errors import LabError

log = logging.getLogger(__name__)

MARKER = ".hil-lab"
PACKAGES = ("numpy", "numpy.libs", "onnxruntime")  # all that `import onnxruntime` needs, and the runner
VENV_TIMEOUT = 60.0


def _registry(lab: LabConfig) -> Path:
    return LAB_VENV_ROOT / lab.name / "venvs.json"


def _readable_by_all(path: Path) -> bool:
    """Every directory on the way can be entered, and the file run, by any user."""
    resolved = path.resolve()
    if not resolved.is_file() or not resolved.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in resolved.parents)


def _closed_parent(path: Path) -> str:
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            return f"{parent} has mode {stat.filemode(mode)}"
    return "unknown"


def base_interpreter() -> Path:
    """A Python of the lab's own version that every user can run (the packages are built for that version)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path("/usr/bin") / version, Path("/usr/local/bin") / version,
                  Path(getattr(sys, "_base_executable", sys.executable))]
    for candidate in candidates:
        if candidate.exists() and _readable_by_all(candidate):
            return candidate
    raise LabError(f"a non-root emulated device needs a {version} that every user can run (tried "
                   f"{', '.join(map(str, candidates))}): install the system's python3 of that version, or build "
                   "hil's .venv from one (scripts/setup.sh uses the python3 on PATH)")


def _marker(path: Path) -> dict[str, str]:
    """What the lab wrote when it made the venv at `path` ({} when it did not)."""
    try:
        found = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _wanted(lab: LabConfig) -> dict[str, str]:
    return {"lab": lab.name, "lab_python": sys.executable, "version": sys.version}


def ensure_venv(lab: LabConfig, device: str, path: Path) -> None:
    """The venv at `path`, made now unless this lab made it before from the same interpreter."""
    if path.exists():
        current = _marker(path)
        if current.get("lab") != lab.name:
            raise LabError(f"device '{device}': {path} exists and hil lab '{lab.name}' did not make it: the lab makes "
                           "the venv an emulated device's `python` names; pick a path of its own in devices.toml")
        if current == _wanted(lab) and (path / "bin" / "python").exists():
            return
        shutil.rmtree(path)
    _register(lab, path)
    base = base_interpreter()
    try:
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True,
                       text=True, timeout=VENV_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LabError(f"device '{device}': {base} -m venv {path} took over {VENV_TIMEOUT:g} s") from None
    except subprocess.CalledProcessError as exc:
        raise LabError(f"device '{device}': {base} -m venv {path} failed: {exc.stderr.strip()[-300:]}") from None
    [target] = sorted(path.glob("lib/python3*/site-packages"))
    source = Path(site.getsitepackages()[0])
    for name in PACKAGES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, symlinks=True, copy_function=_link_or_copy)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            entry = Path(root) / name
            if not entry.is_symlink():
                mode = entry.stat().st_mode
                entry.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                            | (stat.S_IXGRP | stat.S_IXOTH if mode & stat.S_IXUSR else 0))
    if not (_readable_by_all(path / "bin" / "python") and all(d.stat().st_mode & stat.S_IXOTH
                                                               for d in (path, *path.parents))):
        shutil.rmtree(path, ignore_errors=True)
        raise LabError(f"device '{device}': the venv {path} lies in a directory its non-root login cannot enter "
                       f"({_closed_parent(path)}): give `python` a path under an open directory (like /opt or "
                       "/var/lib) in devices.toml")
    (path / MARKER).write_text(json.dumps(_wanted(lab)))
    log.info("device %s: venv %s made from %s", device, path, base)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _register(lab: LabConfig, path: Path) -> None:
    """Remember every venv this lab made, wherever it is, so `down` finds it after a crash."""
    registry = _registry(lab)
    registry.parent.mkdir(parents=True, exist_ok=True)
    known = _registered(lab)
    if str(path) not in known:
        registry.write_text(json.dumps(sorted({*known, str(path)})))


def _registered(lab: LabConfig) -> list[str]:
    try:
        return [str(p) for p in json.loads(_registry(lab).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def remove_venv(lab: LabConfig, path: Path) -> None:
    if path.exists() and _marker(path).get("lab") == lab.name:
        shutil.rmtree(path, ignore_errors=True)


def remove_all(lab: LabConfig) -> None:
    """Every venv this lab made (`hil lab down`)."""
    for recorded in _registered(lab):
        remove_venv(lab, Path(recorded))
    shutil.rmtree(LAB_VENV_ROOT / lab.name, ignore_errors=True)
