# kdiag. `make test` is all a newcomer needs: it installs what is missing, then runs every test.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all setup build test bench bench-triage lint fmt crd docs image plugin run run-in-cluster clean-clusters
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

all: build

## setup: install Debian packages and build/cache the Kubernetes 1.20.2 binaries (once, ~10 min)
setup:
	@hack/setup-cluster.sh >/dev/null

## build: build the kdiag binary
build:
	$(CARGO) build --bin kdiag

## run: a real single-node cluster on this machine with kdiag's controller and agent (needs root)
run: setup
	$(CARGO) run -q --bin kdiag --features local -- local

## run-in-cluster: the same cluster with kdiag installed from its image by `kubectl apply -k`
## config/deploy (a Deployment and a DaemonSet), as on a real cluster (needs root)
run-in-cluster: setup
	$(CARGO) run -q --bin kdiag --features local -- local --in-cluster

## clean-clusters: remove what a killed `make run` or test run left behind
clean-clusters:
	hack/run-cluster.sh cleanup

## test: install what is missing, then run all tests against a real control plane
test: setup
	$(CARGO) test --workspace --all-targets --all-features --no-fail-fast
	$(CARGO) test --workspace --doc

## bench: benchmarks on a real control plane, each figure next to a same-run baseline; prints a
## table and writes bench/results/latest.json (docs/performance.md). BENCH_ARGS="--help" for options.
bench: setup
	$(CARGO) build --release --bin kdiag --bin kdiag-controller --bin kdiag-agent --bin kdiag-bench --example bench_collectors
	$(TARGET_DIR)/release/kdiag-bench --kdiag $(TARGET_DIR)/release/kdiag \
		--collectors $(TARGET_DIR)/release/examples/bench_collectors $(BENCH_ARGS)
	$(MAKE) bench-triage

## bench-triage: `kubectl diag run` to the answer, per triage class (pod, workload, node faults),
## on a real single-node cluster of its own (needs root, ~5 min); writes bench/results/triage.json
bench-triage: setup
	$(CARGO) build --release --bin kdiag -p kdiag --example bench_triage
	$(TARGET_DIR)/release/examples/bench_triage --runs 10 bench/results/triage.json

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt --all

## crd: regenerate config/crd from the Rust types
crd:
	$(CARGO) run -q --bin kdiag -- crd --output-dir config/crd

## docs: regenerate config/crd and the generated parts of docs/ (API reference, security tables)
docs: crd
	KDIAG_UPDATE_DOCS=1 $(CARGO) test -q -p kdiag --test kubectl_diag -- api_reference the_security_page

## image: the kdiag image (kdiag and the node policy's diagnostic tools) with buildah, no Docker daemon;
## target/image/kdiag-<version>.tar to import into nodes (docs/install.md)
image:
	hack/build-image.sh

## plugin: `kubectl diag` for this machine: links /usr/local/bin/kubectl-diag to a release kdiag
plugin:
	$(CARGO) build --release --bin kdiag
	ln -sf "$(abspath $(TARGET_DIR))/release/kdiag" /usr/local/bin/kubectl-diag

help:
	@grep -E '^## ' Makefile | sed 's/^## //'
