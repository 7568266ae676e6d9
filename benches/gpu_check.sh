#!/usr/bin/env bash
# The GPU check, for a machine with PyTorch but no Rust: a charrnn binary built elsewhere against that
# machine's libtorch (CHARRNN), run with its torch/lib on LD_LIBRARY_PATH. Checks that CUDA is found (charrnn
# loads libtorch_cuda.so at run time), that a model trained on the CPU resumes, predicts and evaluates on the
# GPU, that CPU and GPU training agree, and the fused (cuDNN) and bf16 paths; then runs benches/compare_speed.sh
# with DEVICE=cuda on two workloads.
# Usage: CHARRNN=path/to/charrnn [PY=python3] bash benches/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PY:-python3}
bin=${CHARRNN:?set CHARRNN to the binary}
export LD_LIBRARY_PATH="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() { echo; echo "== $*"; }
nvidia-smi -L
step info
$bin info
step "trained 2 epochs on the CPU, resumed to 4 on the GPU, predict and eval on the GPU"
$bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 2 --pred-period 1 --pred-len 0 --device cpu --out "$tmp/r"
$bin train --resume "$tmp/r" --epochs 4 --device cuda
$bin predict --model "$tmp/r" --prefix 分开 --num-chars 20 --device cuda
$bin eval --model "$tmp/r" --device cuda
for dtype in fp32 bf16; do
    for device in cpu cuda; do
        step "10 epochs, $dtype, on $device"
        $bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 10 --pred-period 5 --pred-len 10 --dtype $dtype \
            --device $device --out "$tmp/$dtype-$device" -q
        $bin info --model "$tmp/$dtype-$device" | grep -i perplexity
    done
done
step "2-layer GRU, fused backend (cuDNN), Adam, 2 epochs on the GPU"
$bin train --corpus data/yuanqu.txt --limit-chars 50000 --cell gru --layers 2 --embed 64 --backend fused --optimizer adam \
    --epochs 2 --pred-period 1 --pred-len 10 --device cuda --out "$tmp/gru" -v
step "speed, demo workload"
CHARRNN=$bin PY=$py DEVICE=cuda bash benches/compare_speed.sh
step "speed, 50,000 characters"
CHARRNN=$bin PY=$py DEVICE=cuda LIMIT=50000 EPOCHS=3 ROUNDS=${ROUNDS_50K:-1} bash benches/compare_speed.sh
