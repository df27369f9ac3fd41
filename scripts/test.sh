#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, docs and dependency hygiene, Rust unit
# and integration tests, and the Python client tests (ADBC, polars, grpcio, HTTP, CLI,
# the examples) against a real server. Sets up everything it needs (the Python venv,
# the unused-dependency checker) itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy)"
cargo clippy --locked --workspace --all-targets --quiet -- -D warnings

step "docs (cargo doc, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet

step "unused dependencies (cargo machete)"
if ! command -v cargo-machete >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-machete@0.9.2
fi
cargo machete

step "Python environment"
scripts/python-env.sh

step "promtool (checks of deploy/prometheus)"
if ! command -v promtool >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
promtool --version 2>&1 | sed -n 1p

step "build the quiver binary and the Rust examples"
cargo build --locked -p quiver-server --bin quiver
cargo build --locked -p quiver-examples --bins

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi

step "Python client tests"
QUIVER_BIN="$PWD/target/debug/quiver" QUIVER_REQUIRE_PROMTOOL=1 .venv/bin/python -m pytest tests/python -q -p no:cacheprovider
