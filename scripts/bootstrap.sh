#!/usr/bin/env bash
# Installs everything tiercache's demo, tests and benchmarks need on a fresh Debian machine (as root):
# OS packages (FUSE 3, libfuse2, libjpeg-turbo), a virtualenv in .venv, torch 2.13.0 and the package itself.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

packages=(fuse3 libfuse2 libturbojpeg0)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: please install as root: apt-get install -y ${missing[*]}" >&2; exit 1
  fi
  echo "bootstrap: installing OS packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# pip warns about every missing local index folder; keep its real errors and its exit status.
pip_install() {
  "$VENV/bin/pip" install -q "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

stamp="$VENV/.tiercache-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  echo "bootstrap: installing Python packages into $VENV (torch 2.13.0 CPU build, tiercache[test])"
  pip_install --upgrade pip
  pip_install torch==2.13.0
  pip_install -e '.[test]'
  "$VENV/bin/python" -c "import torch, tiercache, mfusepy, lmdb, boto3, moto"
  touch "$stamp"
fi
