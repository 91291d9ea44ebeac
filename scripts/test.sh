#!/usr/bin/env bash
# The whole test suite: installs what the tests need from Debian packages
# (a no-op when they are present), then runs every cargo test in release
# mode (one build, shared by the integration tests' real processes).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the integration tests drive: real backends, real clients.
packages=(nginx apache2 curl wrk)

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

# nginx and apache2 live in /usr/sbin, which a non-login shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

cargo test --release "$@"
