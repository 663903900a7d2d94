"""hil's command server: runs on the device, started once per SSH connection.

Shipped as source text and run with the device's Python (standard library only; no hil install
on the device). It reads one JSON request per line on stdin and answers one JSON line per request
on stdout, so hundreds of commands share one SSH channel instead of paying sshd's session set-up
(~80 ms) each. Requests run concurrently, each in its own process group so a timeout kills the
whole tree.

Request:  {"op": "run", "id": 1, "cmd": "...", "env": {...}, "cwd": "/x", "stdin": "<b64>", "timeout": 5.0}
          {"op": "kill", "id": 1}   {"op": "ping", "id": 2}
Answer:   {"id": 1, "status": 0, "stdout": "<b64>", "stderr": "<b64>", "timed_out": false, "seconds": 0.001}
          {"id": 2, "pong": true}
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

_out_lock = threading.Lock()
_running = {}  # id -> Popen
_running_lock = threading.Lock()
KILL_GRACE = 0.5  # seconds between SIGTERM and SIGKILL on timeout

# A command of plain words runs exactly as sh would run it (a PATH lookup and an exec), so we
# exec it directly and save the shell's own start (~1 ms of a 2 ms round trip).
_PLAIN_WORDS = re.compile(r"[A-Za-z0-9_./:,+@%=-]+(?: [A-Za-z0-9_./:,+@%=-]+)*")
_SHELL_WORDS = {
    ".", ":", "alias", "bg", "break", "cd", "command", "continue", "echo", "eval", "exec", "exit", "export",
    "fc", "fg", "getopts", "hash", "jobs", "kill", "local", "printf", "pwd", "read", "readonly", "return",
    "set", "shift", "source", "test", "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "wait",
}


def _send(message):
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    with _out_lock:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()


def _kill_group(proc):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(KILL_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


def _argv(cmd, env):
    if _PLAIN_WORDS.fullmatch(cmd):
        words = cmd.split(" ")
        if "=" not in words[0] and words[0] not in _SHELL_WORDS:
            path = shutil.which(words[0], path=env.get("PATH", os.defpath))
            if path is not None:
                return path, words
    return "/bin/sh", ["/bin/sh", "-c", cmd]


# The session's LD_PRELOAD (libfaketime on an emulated device, say) is for the commands, not for
# this server: with it, every clock read of ours re-read the faketime file and doubled the round trip.
# The launcher moves it aside into HIL_SESSION_LD_PRELOAD; each command gets it back.
_BASE_ENV = dict(os.environ)
_SESSION_PRELOAD = _BASE_ENV.pop("HIL_SESSION_LD_PRELOAD", "")
_BASE_ENV.pop("LD_PRELOAD", None)
if _SESSION_PRELOAD:
    _BASE_ENV["LD_PRELOAD"] = _SESSION_PRELOAD


def _run(req):
    rid = req["id"]
    started = time.monotonic()
    env = dict(_BASE_ENV)
    env.update(req.get("env") or {})
    stdin = req.get("stdin")
    data = base64.b64decode(stdin) if stdin is not None else None
    cwd = req.get("cwd")
    if cwd is not None and not os.path.isdir(cwd):
        msg = f"hil: cannot cd to {cwd}: No such file or directory\n"
        _send({"id": rid, "status": 2, "stdout": "", "stderr": base64.b64encode(msg.encode()).decode(),
               "timed_out": False, "seconds": 0.0})
        return
    executable, argv = _argv(req["cmd"], env)
    try:
        proc = subprocess.Popen(
            argv, executable=executable,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=env, start_new_session=True,
        )
    except OSError as exc:
        _send({"id": rid, "error": f"cannot start /bin/sh: {exc}"})
        return
    with _running_lock:
        _running[rid] = proc
    timed_out = False
    try:
        out, err = proc.communicate(data, timeout=req.get("timeout"))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        out, err = proc.communicate()
    finally:
        with _running_lock:
            _running.pop(rid, None)
    _send({"id": rid, "status": proc.returncode, "timed_out": timed_out,
           "stdout": base64.b64encode(out).decode(), "stderr": base64.b64encode(err).decode(),
           "seconds": time.monotonic() - started})


def main():
    # Our stdout is the protocol: nothing else may write there.
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
        except ValueError:
            continue
        op = req.get("op")
        if op == "run":
            threading.Thread(target=_run, args=(req,), daemon=True).start()
        elif op == "kill":
            with _running_lock:
                proc = _running.get(req.get("id"))
            if proc is not None:
                threading.Thread(target=_kill_group, args=(proc,), daemon=True).start()
        elif op == "ping":
            _send({"id": req.get("id"), "pong": True})
    # The connection is gone: take every running command down with us.
    with _running_lock:
        procs = list(_running.values())
    for proc in procs:
        _kill_group(proc)


if __name__ == "__main__":
    main()
