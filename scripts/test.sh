#!/usr/bin/env bash
# The test command: sets up what is missing, then runs every test.
# Large data (real models, ONNX's node suite) comes from $SHARC_SHARED_DIR,
# which defaults to ../shared beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export SHARC_SHARED_DIR="${SHARC_SHARED_DIR:-$(cd .. && pwd)/shared}"
export SHARC_REQUIRE_PYTHON=1
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"
