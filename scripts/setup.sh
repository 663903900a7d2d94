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
  [/usr/sbin/visudo]=sudo
  [/usr/sbin/useradd]=passwd   # the non-root login of an emulated device (rpi4-emu)
  [/usr/bin/chromium]=chromium  # only hil's own tests: they look at the HTML report headless
  # only hil's own tests: they run the README's check of an evidence bundle with standard tools
  [/usr/bin/jq]=jq
  [/usr/bin/openssl]=openssl
)
missing=()
for path in "${!NEED[@]}"; do
  [ -x "$path" ] || missing+=("${NEED[$path]}")
done
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing+=(libfaketime)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# `hil report` runs the Allure 3 CLI (package.json) on Node.js; Debian 12's nodejs 18 does it.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
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
node -e 'process.exit(parseInt(process.versions.node) < 18 ? 1 : 0)' || {
  echo "setup: hil report needs Node.js >= 18, found $(node --version)" >&2; exit 1; }

stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

# The Allure 3 CLI, exactly as package-lock.json pins it; again only when the lock file changed.
npm_stamp=node_modules/.hil-installed
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -x node_modules/.bin/allure ] || [ "$(cat "$npm_stamp" 2>/dev/null)" != "$lock_sum" ]; then
  # --loglevel=error: on Node 18 npm warns (EBADENGINE) about dependencies of commands hil does not use.
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sum" > "$npm_stamp"
fi
