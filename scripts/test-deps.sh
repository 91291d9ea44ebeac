#!/usr/bin/env bash
# Installs what the integration tests need and makes the users they run
# as; each step is a no-op when its result is already there, so
# scripts/test.sh runs this every time. Run it alone to prepare a fresh
# machine.
set -euo pipefail

# Debian packages the integration tests drive: real backends, real clients,
# an outside TLS scanner (testssl.sh), and python3-venv for the other (sslyze).
# The PKCS#11 module's clients: pkcs11-tool (opensc), libp11's OpenSSL
# engine, p11tool (gnutls-bin), PyKCS11, ssh-keygen, and ss (iproute2) to
# see who holds vault connections; nm (binutils) to read what the module
# exports; keytool (a headless JRE) for Java's SunPKCS11. A browser for the
# status page (headless chromium, with a font to render it in), and
# logrotate for the package's snippet. A real etcd cluster for the
# clustered keystore (etcd-server, etcdctl from etcd-client), and protoc
# with its well-known types, which the etcd-client crate's build needs.
packages=(nginx apache2 curl wrk openssl testssl.sh python3-venv chromium fonts-dejavu-core logrotate
    opensc libengine-pkcs11-openssl gnutls-bin python3-pykcs11 openssh-client iproute2 binutils
    openjdk-17-jre-headless etcd-server etcd-client protobuf-compiler libprotobuf-dev)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# pkcs11-provider (the OpenSSL 3 provider route) is in bookworm-backports
# only: add that source once, then install it from there.
backports=/etc/apt/sources.list.d/vaultgate-bookworm-backports.sources
if ! dpkg-query -W -f='${Status}' pkcs11-provider 2>/dev/null | grep -q "install ok installed"; then
    if [ ! -e "$backports" ]; then
        # The same mirror the machine's bookworm source uses.
        mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
        [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
        if [ -z "$mirror" ]; then
            echo "no bookworm apt source found to add bookworm-backports beside; add it by hand" >&2
            exit 1
        fi
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
            | $sudo tee "$backports" >/dev/null
    fi
    echo "installing: pkcs11-provider (bookworm-backports)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports pkcs11-provider
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# sslyze (PyPI) in its own venv, made with Debian's python3 so it does not
# depend on whichever python3 is first on PATH. A no-op once it is there.
venv=/opt/vaultgate-test-venv
if [ ! -x "$venv/bin/sslyze" ]; then
    echo "installing sslyze into $venv"
    $sudo /usr/bin/python3 -m venv "$venv"
    $sudo "$venv/bin/pip" install --quiet --disable-pip-version-check sslyze
fi

# cargo-deb, for the package test (tests/package.rs). A no-op once it is there.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

# The system users of the shipped production configs (config/vault-only.toml,
# config/proxy-only.toml), as docs/deployment.md makes them: the vault's
# user, the proxy's, and the proxy in the vault socket's group.
for u in vaultgate vaultgate-proxy; do
    id "$u" >/dev/null 2>&1 || $sudo useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$u"
done
id -nG vaultgate-proxy | tr ' ' '\n' | grep -qx vaultgate || $sudo usermod -aG vaultgate vaultgate-proxy

