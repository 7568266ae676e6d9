#!/usr/bin/env bash
# The GPU check, for a machine with PyTorch but no Rust: a charrnn binary built elsewhere against that
# machine's libtorch (CHARRNN), run with its torch/lib on LD_LIBRARY_PATH. Checks that CUDA is found (charrnn
# loads libtorch_cuda.so at run time), that a model trained on the CPU resumes, predicts and evaluates on the
# GPU, that CPU and GPU training agree, the fused (cuDNN) and bf16 paths, fine-tuning, beam search, the LSTM's
# default backend (fused, with no cuDNN weight-copy warning) and `serve`; then runs benches/compare_speed.sh
# with DEVICE=cuda on two workloads.
# Any failed step or disagreement stops it with a FAIL line and a non-zero status.
# Usage: CHARRNN=path/to/charrnn [PY=python3] [SPEED=0] bash benches/gpu_check.sh   (SPEED=0 skips the
# speed comparisons)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-python3}
bin=${CHARRNN:?set CHARRNN to the binary}
export LD_LIBRARY_PATH="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() { echo; echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# The cross-entropy `eval --json` reports for model folder $1 (evaluated on the CPU).
cross_entropy() { $bin eval --model "$1" --device cpu --json | "$py" -c 'import json, sys; print(json.load(sys.stdin)["cross_entropy"])'; }
# Whether $1 and $2 agree to the fraction $3 of $1.
agree() { "$py" -c 'import sys; a, b, r = map(float, sys.argv[1:]); sys.exit(abs(a - b) > r * a)' "$1" "$2" "$3"; }
nvidia-smi -L
step info
$bin info | tee "$tmp/info"
grep -q '^cuda available' "$tmp/info" || fail "charrnn does not find CUDA"
grep -q '^auto device cuda' "$tmp/info" || fail "--device auto does not pick the GPU"
step "trained 2 epochs on the CPU, resumed to 4 on the GPU, predict and eval on the GPU"
$bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 2 --pred-period 1 --pred-len 0 --device cpu --out "$tmp/r"
$bin train --resume "$tmp/r" --epochs 4 --device cuda
$bin predict --model "$tmp/r" --prefix 分开 --num-chars 20 --device cuda
$bin eval --model "$tmp/r" --device cuda
[ "$(grep -c '"epoch": 4' "$tmp/r/model.json")" -ge 1 ] || fail "the resumed run did not reach epoch 4"
for dtype in fp32 bf16; do
    for device in cpu cuda; do
        step "10 epochs, $dtype, on $device"
        $bin train --corpus data/yuanqu.txt --limit-chars 10000 --epochs 10 --pred-period 5 --pred-len 10 --dtype $dtype \
            --device $device --out "$tmp/$dtype-$device" -q
        $bin info --model "$tmp/$dtype-$device" | grep -i perplexity
    done
    # The same seed on both devices: the same model up to rounding (fp32), or bfloat16's wider rounding.
    cpu=$(cross_entropy "$tmp/$dtype-cpu"); gpu=$(cross_entropy "$tmp/$dtype-cuda")
    tolerance=$([ $dtype = fp32 ] && echo 0.001 || echo 0.05)
    agree "$cpu" "$gpu" "$tolerance" || fail "$dtype: CPU cross-entropy $cpu, GPU $gpu (tolerance $tolerance)"
    echo "$dtype: CPU and GPU cross-entropy $cpu and $gpu agree within $tolerance"
done
step "2-layer GRU, fused backend (cuDNN), Adam, 2 epochs on the GPU"
$bin train --corpus data/yuanqu.txt --limit-chars 50000 --cell gru --layers 2 --embed 64 --backend fused --optimizer adam \
    --epochs 2 --pred-period 1 --pred-len 10 --device cuda --out "$tmp/gru" -v
step "fine-tuned on the GPU from the CPU-trained model, on a text with new characters (fused backend)"
printf 'the quick brown fox 分开 jumps over 不分开 the lazy dog. %.0s' $(seq 300) >"$tmp/second.txt"
$bin train --corpus "$tmp/second.txt" --init-from "$tmp/r" --backend fused --optimizer adam --epochs 2 --pred-period 1 \
    --pred-len 10 --prefix 'the ' --device cuda --out "$tmp/ft"
$bin info --model "$tmp/ft" | grep -E 'vocabulary|started from|trained on'
$bin predict --model "$tmp/ft" --prefix 'the quick' --num-chars 20 --device cuda
$bin eval --model "$tmp/ft" --device cuda
step "beam search on the GPU: 3 beams, most likely first"
$bin predict --model "$tmp/r" --prefix 分开 --num-chars 12 --beam 3 --json --device cuda | tee "$tmp/beams"
"$py" -c 'import json, sys
lps = [json.loads(l)["log_prob"] for l in open(sys.argv[1])]
sys.exit(not (len(lps) == 3 and lps == sorted(lps, reverse=True)))' "$tmp/beams" || fail "beams missing or not sorted"
step "the default backend on the GPU (auto: cuDNN's fused kernels, reading the flat buffer in place), written out for comparison"
# cuDNN copies weights that are not one contiguous buffer at every call, warning each time ("RNN module
# weights are not part of single contiguous chunk of memory", from RNN.cpp): none is expected now, also for
# two layers with dropout between them (one call per layer).
for run in "lstm auto" "lstm scratch" "gru auto" "lstm auto --layers 2 --dropout 0.2"; do
    set -- $run
    name=$(echo "$run" | tr -d ' -.')
    $bin train --corpus data/yuanqu.txt --limit-chars 50000 --cell "$1" --embed 64 --optimizer adam --epochs 2 \
        --pred-len 0 --device cuda --backend "$2" "${@:3}" --out "$tmp/$name" -v >"$tmp/$name.log" 2>&1
    grep '^epoch' "$tmp/$name.log" || true
    warnings=$(grep -c 'contiguous chunk' "$tmp/$name.log" || true)
    backend=$(grep -o '"backend": *"[a-z]*"' "$tmp/$name/model.json" | head -1)
    echo "$run: $backend, $warnings lines of cuDNN's weight-copy warning"
    [ "$2" = auto ] && { echo "$backend" | grep -q fused || fail "--backend auto should pick the fused kernels on a GPU"; }
    [ "$warnings" = 0 ] || fail "$run: cuDNN copied the weights ($warnings warnings)"
done
step "serve on the GPU: health, a greedy request equal to predict's, SIGTERM"
$bin serve --model "$tmp/r" --device cuda --port 0 2>"$tmp/serve.err" &
server=$!
for _ in $(seq 100); do grep -q 'http://' "$tmp/serve.err" && break; sleep 0.2; done
address=$(grep -o 'http://[0-9.:]*' "$tmp/serve.err") || fail "serve did not start: $(cat "$tmp/serve.err")"
served=$("$py" -c 'import json, sys, urllib.request
a = sys.argv[1]
assert json.load(urllib.request.urlopen(a + "/healthz"))["status"] == "ok"
body = json.dumps({"prefix": "分开", "num_chars": 30}).encode()
print(json.load(urllib.request.urlopen(urllib.request.Request(a + "/v1/generate", data=body)))["samples"][0]["text"])' "$address")
predicted=$($bin predict --model "$tmp/r" --prefix 分开 --num-chars 30 --device cuda)
kill -TERM $server
wait $server || fail "serve did not stop cleanly"
[ "$served" = "$predicted" ] || fail "serve gave '$served', predict '$predicted'"
echo "serve on cuda: $served"
[ "${SPEED:-1}" = 0 ] && { echo; echo "gpu_check: all steps passed (speed skipped)"; exit 0; }
step "speed, demo workload"
CHARRNN=$bin PY=$py DEVICE=cuda bash benches/compare_speed.sh
step "speed, 50,000 characters"
CHARRNN=$bin PY=$py DEVICE=cuda LIMIT=50000 EPOCHS=3 ROUNDS=${ROUNDS_50K:-1} bash benches/compare_speed.sh
