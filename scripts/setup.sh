#!/usr/bin/env bash
# Installs what hil needs on a fresh Debian/Ubuntu machine, and nothing that is already there.
# Idempotent: a second run only checks. Used by `make setup` (and so by `make run` / `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."

# tool to check -> Debian package that provides it
declare -A NEED=(
  [/usr/sbin/sshd]=openssh-server
  [/usr/bin/ssh-keygen]=openssh-client
  [/usr/bin/ssh]=openssh-client
  [/usr/bin/socat]=socat
  [/usr/sbin/iptables]=iptables
  [/usr/sbin/ip]=iproute2
  [/usr/bin/nsenter]=util-linux
  [/usr/bin/sudo]=sudo
)
missing=()
for path in "${!NEED[@]}"; do
  [ -x "$path" ] || missing+=("${NEED[$path]}")
done
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing+=(libfaketime)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: hil needs Python >= 3.11, found $(python3 --version)" >&2; exit 1; }

stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
