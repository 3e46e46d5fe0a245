#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): formatting, clippy, unit
# tests, and the integration suite against real redis-server, Webdis and
# nginx with mutual TLS. The Debian packages the suite needs are installed
# first when missing (this needs root). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run --locked --quiet --example stack -- install
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets "$@"
