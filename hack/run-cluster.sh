#!/usr/bin/env bash
# Starts the local single-node Kubernetes cluster (crates/testenv, level 2) and keeps it until
# Ctrl-C or SIGTERM, then removes everything it made. Meant as the `make run` hook.
#
#   hack/run-cluster.sh                          # prints KUBECONFIG and where things are
#   hack/run-cluster.sh up --env-file run.env    # also writes KEY=value lines once the node is Ready
#   hack/run-cluster.sh cleanup                  # finishes runs whose owner was killed
#   hack/run-cluster.sh measure                  # image build, cached start and stop timings
#
# A script can start it in the background and wait for the env file:
#   hack/run-cluster.sh up --env-file "$f" & pid=$!
#   until [ -s "$f" ]; do kill -0 $pid || exit 1; sleep 1; done; set -a; . "$f"; set +a
#   ...; kill $pid; wait $pid
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup-cluster.sh >/dev/null
# cargo run replaces itself with the example, so signals reach it directly.
exec cargo run -q -p kdiag-testenv --example cluster -- "$@"
