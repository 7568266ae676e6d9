#!/usr/bin/env bash
# Prepares a fresh checkout: a project-local .venv with PyTorch 2.13.0 (libtorch for tch 0.26, and the
# reference implementation the tests compare against) and .cargo/config.toml pointing cargo at it, so that
# a plain `cargo build` / `cargo test` works in any later shell. Idempotent; safe to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3}

have_torch() {
    [ -x .venv/bin/python ] &&
        .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null
}

# Usage: scripts/setup.sh [--build-only]
# --build-only: only what building needs; with LIBTORCH already set, that is nothing (no .venv, no download).
build_only=false
[ "${1:-}" = "--build-only" ] && build_only=true
if $build_only && [ -n "${LIBTORCH:-}" ]; then
    echo "setup: using LIBTORCH=$LIBTORCH from the environment" >&2
    exit 0
fi

if ! have_torch; then
    echo "setup: installing torch==$TORCH_VERSION into .venv (about 4.7 GB with its CUDA libraries)" >&2
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
fi

mkdir -p .cargo
if [ -n "${LIBTORCH:-}" ]; then
    # The user's own libtorch wins: cargo's [env] never overrides a variable that is already set.
    echo "setup: using LIBTORCH=$LIBTORCH from the environment" >&2
fi
torch_dir=$(.venv/bin/python -c "import os, torch; print(os.path.dirname(torch.__file__))")
cat > .cargo/config.toml.tmp <<CONF
# Written by scripts/setup.sh; do not edit (it is rewritten on every run).
[env]
LIBTORCH = "$torch_dir"
CONF
mv .cargo/config.toml.tmp .cargo/config.toml
