#!/usr/bin/env bash
# Issue 16: where a float32 training step's time goes. Records `perf` samples of charrnn training the
# textbook workload (first 10,000 characters, hidden 256, EPOCHS epochs, all cores) and sorts them into
# buckets by shared object and symbol: MKL's matrix products, other MKL (vector math), ATen's elementwise
# and reduction kernels, libgomp (OpenMP's fork, join and waiting), libtorch's dispatch and bookkeeping,
# memory (malloc, page faults), the kernel otherwise, and the rest. Run it with the kernels of an AVX2-only
# CPU as MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 bash benches/profile_train.sh.
# ARGS="--cell gru --embed 64 --optimizer adam --clip 1 --steps 64" CORPUS=data/tinyshakespeare.txt
# LIMIT=200000 profiles another workload (ARGS are added to train's flags; LIMIT 0: the whole corpus).
# Needs perf (Debian's linux-perf) and a built charrnn (make build).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CHARRNN:-./target/release/charrnn}
epochs=${EPOCHS:-20}
command -v perf >/dev/null || { echo "perf is not installed (Debian: apt install linux-perf)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CHARRNN_CACHE="$tmp/cache"
corpus=${CORPUS:-data/yuanqu.txt}
limit=${LIMIT:-10000}
limit_flag=(--limit-chars "$limit")
[ "$limit" = 0 ] && limit_flag=()
# shellcheck disable=SC2206
extra=(${ARGS:-})
$bin train --corpus "$corpus" "${limit_flag[@]}" --epochs 1 --out "$tmp/warm" -q "${extra[@]}"
perf record -q -F 2000 -o "$tmp/perf.data" -- $bin train --corpus "$corpus" "${limit_flag[@]}" \
    --epochs "$epochs" --val-frac 0 --pred-len 0 --out "$tmp/m" -q "${extra[@]}" 2>/dev/null
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-default} MKL_ENABLE_INSTRUCTIONS=${MKL_ENABLE_INSTRUCTIONS:-default}"
echo "charrnn train --corpus $corpus ${limit_flag[*]} ${extra[*]}, $epochs epochs: share of perf samples (whole process, start-up included)"
perf report -i "$tmp/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' |
    awk '{
        pct = $1; sub(/%/, "", pct); dso = $2; sym = ""; for (i = 4; i <= NF; i++) sym = sym " " $i
        if (sym ~ /sgemm|dgemm|gemm_kernel|mkl_blas/) b = "MKL matrix products (sgemm)"
        else if (dso ~ /libtorch_cpu/ && sym ~ /mkl_/) b = "MKL vector math (tanh, exp)"
        else if (dso ~ /libgomp/) b = "libgomp (OpenMP fork, join, wait)"
        else if (sym ~ /at::native|Vectorized|vec::|reduce|_kernel/) b = "ATen elementwise and reduction kernels"
        else if (sym ~ /malloc|free|_int_|page_fault|clear_page|do_anonymous/) b = "memory (allocation, page faults)"
        else if (dso ~ /kernel/) b = "kernel, other"
        else if (dso ~ /libtorch|libc10/) b = "libtorch dispatch and bookkeeping"
        else if (dso ~ /charrnn/) b = "charrnn itself"
        else b = "other (" dso ")"
        share[b] += pct
    }
    END { for (b in share) printf "%6.1f%%  %s\n", share[b], b }' | sort -rn
