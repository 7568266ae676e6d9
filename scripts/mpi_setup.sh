#!/usr/bin/env bash
# What the `mpi` feature's build and tests need: Open MPI (openmpi-bin, libopenmpi-dev) and libclang (the
# mpi crate's build generates its bindings with bindgen), installed from Debian's packages when missing and
# running as root (as in CI). Without root, says what to install and leaves them out: `make test` then
# builds and tests without the feature. Idempotent.
set -euo pipefail
have_mpi() {
    command -v mpicc >/dev/null && command -v mpirun >/dev/null &&
        { ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' || ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; }
}
have_mpi && exit 0
packages=(openmpi-bin libopenmpi-dev libclang-dev)
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "mpi_setup: no Open MPI here, so the mpi feature's tests are left out; to run them: sudo apt-get install ${packages[*]}" >&2
    [ "${CI:-}" = true ] && { echo "mpi_setup: CI must run the MPI tests" >&2; exit 1; }
    exit 0
fi
echo "mpi_setup: installing ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }
have_mpi
