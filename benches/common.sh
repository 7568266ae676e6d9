# Sourced (from the repository root) by the benchmark scripts that train with charrnn and compare with
# PyTorch: the project's set-up (the whole torch wheel, which `import torch` needs), a release build, and a
# temporary folder, removed on exit, that holds the prepared-corpus cache.
# After it: $bin (charrnn), $py (the project's Python), $tmp.
bash scripts/setup.sh >/dev/null
cargo build --release --quiet
bin=./target/release/charrnn
py=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CHARRNN_CACHE="$tmp/cache"
