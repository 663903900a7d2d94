"""The serial console of a non-root emulated device: getty and login, as a real board's console has them.

Started (as root, inside the device's namespaces) on the console pty by the device's init. It prints
a banner and `<hostname> login: `, reads the password with echo off, checks it against a salted
hash, waits a moment and says `Login incorrect` when it is wrong, and otherwise starts the user's
shell as that user. When the shell exits it starts over, as a respawned getty does.

Standard library only: it runs with the lab's interpreter, but it is the device's program.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pwd
import signal
import sys
import termios
import time

FAILED_LOGIN_DELAY = 1.0


def password_hash(salt: str, password: str) -> str:
    """What the console's shadow file holds (written by hil.lab.users, checked here)."""
    return hashlib.scrypt(password.encode(), salt=salt.encode(), n=2**14, r=8, p=1).hex()


def _read_line(prompt: str, echo: bool = True) -> str | None:
    """One line from the console, None at end of file; an interrupted read (Ctrl-C) gives ""."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    if not echo:
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        return ""
    finally:
        if not echo:
            termios.tcsetattr(fd, termios.TCSANOW, saved)
            sys.stdout.write("\n")
    if not line:
        return None
    return line.rstrip("\r\n")


def _shell(config: dict[str, object]) -> None:
    """The user's login shell, in a process group of its own that owns the terminal while it runs."""
    user = pwd.getpwnam(str(config["user"]))
    env = {**dict(config["env"]), "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,  # type: ignore[call-overload]
           "SHELL": user.pw_shell}
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(0, os.getpgrp())
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        try:
            os.chdir(user.pw_dir)
        except OSError:
            os.chdir("/")
        shell = str(config["shell"]).split()
        os.execvpe(shell[0], shell, env)
    os.waitpid(pid, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # take the terminal back from the shell's process group
    os.tcsetpgrp(0, os.getpgrp())


def main(config_path: str) -> int:
    with open(config_path) as f:
        config = json.load(f)
    # Ctrl-C at a prompt (hil's console sync sends one) raises KeyboardInterrupt: the prompt starts over.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    host = str(config["hostname"])
    while True:
        sys.stdout.write(f"\nDebian GNU/Linux 12 {host} ttyS0\n\n")
        while True:
            name = _read_line(f"{host} login: ")
            if name is None:
                return 0
            if not name:
                continue
            password = _read_line("Password: ", echo=False)
            if password is None:
                return 0
            with open(str(config["shadow"])) as f:
                salt, _, expected = f.read().strip().partition("$")
            if name == config["user"] and hmac.compare_digest(password_hash(salt, password), expected):
                break
            time.sleep(FAILED_LOGIN_DELAY)
            sys.stdout.write("\nLogin incorrect\n")
        _shell(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
