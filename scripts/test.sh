#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, Rust unit and integration tests,
# and the Python client tests (ADBC, polars, HTTP, CLI) against a real server.
# Sets up everything it needs (the Python venv) itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "Python environment"
scripts/python-env.sh

step "build the quiver binary"
cargo build -p quiver-server --bin quiver

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

step "Python client tests"
QUIVER_BIN="$PWD/target/debug/quiver" .venv/bin/python -m pytest tests/python -q -p no:cacheprovider
