#!/usr/bin/env bash
# The whole test suite: installs what the tests need from Debian packages
# (a no-op when they are present), checks formatting, lints and docs, then
# runs every cargo test in release mode (one build, shared by the
# integration tests' real processes).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the integration tests drive (Debian packages, a PyPI venv, the
# production configs' users): a no-op once it is all there.
"$(dirname "$0")/test-deps.sh"

# nginx and apache2 live in /usr/sbin, which a non-login shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# What review would otherwise have to catch: formatting, lints (the policy
# is Cargo.toml's [lints] and clippy.toml), and docs whose links resolve.
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --document-private-items

# `cargo test` does not build cdylibs: the PKCS#11 tests load
# target/release/libvaultgate_pkcs11.so, built here with everything else.
cargo build --release
cargo test --release "$@"
