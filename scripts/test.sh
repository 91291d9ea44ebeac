#!/usr/bin/env bash
# The whole test suite: installs what the tests need from Debian packages
# (a no-op when they are present), checks formatting, lints and docs, then
# runs every cargo test in release mode (one build, shared by the
# integration tests' real processes).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the integration tests drive: real backends, real clients,
# an outside TLS scanner (testssl.sh), and python3-venv for the other (sslyze).
packages=(nginx apache2 curl wrk testssl.sh python3-venv)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# sslyze (PyPI) in its own venv, made with Debian's python3 so it does not
# depend on whichever python3 is first on PATH. A no-op once it is there.
venv=/opt/vaultgate-test-venv
if [ ! -x "$venv/bin/sslyze" ]; then
    echo "installing sslyze into $venv"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo /usr/bin/python3 -m venv "$venv"
    $sudo "$venv/bin/pip" install --quiet --disable-pip-version-check sslyze
fi

# The system users of the shipped production configs (config/vault-only.toml,
# config/proxy-only.toml), as docs/deployment.md makes them: the vault's
# user, the proxy's, and the proxy in the vault socket's group.
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
for u in vaultgate vaultgate-proxy; do
    id "$u" >/dev/null 2>&1 || $sudo useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$u"
done
id -nG vaultgate-proxy | tr ' ' '\n' | grep -qx vaultgate || $sudo usermod -aG vaultgate vaultgate-proxy

# nginx and apache2 live in /usr/sbin, which a non-login shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

# What review would otherwise have to catch: formatting, lints (the policy
# is Cargo.toml's [lints] and clippy.toml), and docs whose links resolve.
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --document-private-items

cargo test --release "$@"
