# kdiag. `make test` is all a newcomer needs: it installs what is missing, then runs every test.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all setup build test bench lint fmt crd run clean-clusters

all: build

## setup: install Debian packages and build/cache the Kubernetes 1.20.2 binaries (once, ~10 min)
setup:
	@hack/setup-cluster.sh >/dev/null

## build: build the kdiag binary
build:
	$(CARGO) build --bin kdiag

## run: a real single-node cluster on this machine with kdiag's controller and agent (needs root)
run: setup
	$(CARGO) run -q --bin kdiag -- local

## clean-clusters: remove what a killed `make run` or test run left behind
clean-clusters:
	hack/run-cluster.sh cleanup

## test: install what is missing, then run all tests against a real control plane
test: setup
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

## bench: benchmarks on a real control plane, each figure next to a same-run baseline; prints a
## table and writes bench/results/latest.json (docs/performance.md). BENCH_ARGS="--help" for options.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
bench: setup
	$(CARGO) build --release --bin kdiag --bin kdiag-bench
	$(CARGO) build --release -p kdiag-collectors --example bench_collectors
	$(TARGET_DIR)/release/kdiag-bench --kdiag $(TARGET_DIR)/release/kdiag \
		--collectors $(TARGET_DIR)/release/examples/bench_collectors $(BENCH_ARGS)

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## crd: regenerate config/crd from the Rust types
crd:
	$(CARGO) run -q --bin kdiag -- crd --output-dir config/crd

help:
	@grep -E '^## ' Makefile | sed 's/^## //'
