#!/usr/bin/env bash
# Prepares a fresh checkout: a project-local .venv with PyTorch 2.13.0 (libtorch for tch 0.26, and the
# reference implementation the tests compare against) and .cargo/config.toml pointing cargo at it, so that
# a plain `cargo build` / `cargo test` works in any later shell. Idempotent; safe to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
# The two CUDA runtime libraries libtorch_cpu.so links (libcudart, libcupti), as torch 2.13.0's
# cuda-toolkit==13.0.3 pins them.
CPU_RUNTIME=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
PYTHON=${PYTHON:-python3}

# Whether `import torch` works in .venv, at the right version (the reference tests and benchmarks need it).
have_python_torch() {
    [ -x .venv/bin/python ] &&
        .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null
}

# Whether .venv holds libtorch at the right version (what building and running charrnn need), importable or not.
have_libtorch() {
    [ -x .venv/bin/python ] &&
        .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('torch') != '$TORCH_VERSION')" 2>/dev/null &&
        .venv/bin/python -c "import importlib.metadata as m; m.version('nvidia-cuda-runtime'); m.version('nvidia-cuda-cupti')" 2>/dev/null
}

# Usage: scripts/setup.sh [--build-only]
# --build-only: only what building and running charrnn need; with LIBTORCH already set, that is nothing (no
# .venv, no download). Without an NVIDIA driver (and unless CHARRNN_TORCH=full), that is the torch wheel
# without its CUDA dependencies plus the two CUDA runtime libraries libtorch_cpu.so links: about 1 GB
# instead of 4.7 GB. Without --build-only (make test, the benchmarks), the whole wheel: the reference tests
# `import torch`, whose Python extension links every CUDA library.
build_only=false
[ "${1:-}" = "--build-only" ] && build_only=true
if $build_only && [ -n "${LIBTORCH:-}" ]; then
    echo "setup: using LIBTORCH=$LIBTORCH from the environment" >&2
    exit 0
fi
full=true
if $build_only && [ "${CHARRNN_TORCH:-auto}" != full ] && [ ! -e /proc/driver/nvidia/version ]; then
    full=false
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if $full && ! have_python_torch; then
    echo "setup: installing torch==$TORCH_VERSION with its CUDA libraries into .venv (about 4.7 GB)" >&2
    "${pip[@]}" "torch==$TORCH_VERSION" numpy
elif ! $full && ! have_libtorch; then
    echo "setup: no NVIDIA driver: installing torch==$TORCH_VERSION without its CUDA libraries into .venv (about 1 GB; CHARRNN_TORCH=full for all of it)" >&2
    "${pip[@]}" --no-deps "torch==$TORCH_VERSION" "${CPU_RUNTIME[@]}"
fi

# The tests' reader of exported ONNX models (tests/reference/onnx_run.py): onnxruntime and onnx's checker.
ONNX_PACKAGES=(onnx==1.23.2 onnxruntime==1.31.1)
if ! $build_only && ! .venv/bin/python -c "import onnx, onnxruntime" 2>/dev/null; then
    echo "setup: installing ${ONNX_PACKAGES[*]} into .venv (the ONNX export's tests)" >&2
    "${pip[@]}" "${ONNX_PACKAGES[@]}"
fi

mkdir -p .cargo
if [ -n "${LIBTORCH:-}" ]; then
    # The user's own libtorch wins: cargo's [env] never overrides a variable that is already set.
    echo "setup: using LIBTORCH=$LIBTORCH from the environment" >&2
fi
torch_dir=$(.venv/bin/python -c "import importlib.util, os; print(importlib.util.find_spec('torch').submodule_search_locations[0])")
cat > .cargo/config.toml.tmp <<CONF
# Written by scripts/setup.sh; do not edit (it is rewritten on every run).
[env]
LIBTORCH = "$torch_dir"
CONF
mv .cargo/config.toml.tmp .cargo/config.toml
