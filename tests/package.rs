//! The Debian package: `cargo deb` builds it from the repository (the
//! release binary this test run built), it installs and purges cleanly in
//! a throwaway root, and `systemd-analyze verify` accepts its units there.
//!
//! The throwaway root is this machine's root filesystem under an overlay
//! whose upper layer is a tmpfs, in a mount namespace of the test's own:
//! dpkg, its maintainer scripts (useradd) and systemd-analyze run in it
//! with `chroot`, and nothing they write reaches the real system.

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

mod common;

use std::path::Path;
use std::process::Command;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cargo deb --no-build`: fails saying how to install cargo-deb.
fn build_deb(out: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let has = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has,
        "`cargo deb` is needed by this test: run `cargo install cargo-deb --locked` (scripts/test.sh does this)"
    );
    // The binary the package ships is the one cargo built for this run.
    let built = Path::new(common::bin());
    assert_eq!(
        built,
        manifest_dir().join("target/release/vaultgate"),
        "run this test with --release and the default target dir: the package ships target/release/vaultgate"
    );
    let o = Command::new(&cargo)
        .args(["deb", "--no-build", "--no-strip", "--output"])
        .arg(out)
        .current_dir(manifest_dir())
        .output()
        .expect("run cargo deb");
    assert!(
        o.status.success(),
        "cargo deb failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// What the script inside the throwaway root prints, as `KEY=VALUE`.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

const IN_THROWAWAY_ROOT: &str = r#"
set -eu
deb="$1"; t="$2"
mount -t tmpfs tmpfs "$t"
mkdir "$t/upper" "$t/work" "$t/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$t/upper,workdir=$t/work" "$t/root"
r="$t/root"
mount -t proc proc "$r/proc"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
cp "$deb" "$r/tmp/vaultgate.deb"
if chroot "$r" getent passwd vaultgate-proxy >/dev/null; then
    chroot "$r" userdel vaultgate-proxy
fi
if chroot "$r" getent passwd vaultgate >/dev/null; then
    chroot "$r" userdel vaultgate
fi
chroot "$r" getent group vaultgate >/dev/null && chroot "$r" groupdel vaultgate
chroot "$r" getent group vaultgate-proxy >/dev/null && chroot "$r" groupdel vaultgate-proxy
chroot "$r" dpkg --remove vaultgate >/dev/null 2>&1 || true

chroot "$r" dpkg -i /tmp/vaultgate.deb
echo "status=$(chroot "$r" dpkg-query -W -f='${db:Status-Abbrev}' vaultgate)"
echo "groups=$(chroot "$r" id -nG vaultgate-proxy)"
echo "state=$(stat -c '%U:%G %a' "$r/var/lib/vaultgate")"
echo "logdir=$(stat -c '%U:%G %a' "$r/var/log/vaultgate")"
echo "conffiles=$(chroot "$r" dpkg-query -W -f='${Conffiles}' vaultgate | awk '{print $1}' | sort | tr '\n' ' ')"
echo "version=$(chroot "$r" /usr/bin/vaultgate --version)"
if chroot "$r" systemd-analyze verify /lib/systemd/system/vaultgate-vault.service /lib/systemd/system/vaultgate-proxy.service; then
    echo "verify=0"
else
    echo "verify=$?"
fi
if command -v logrotate >/dev/null; then
    chroot "$r" logrotate --debug /etc/logrotate.d/vaultgate >/dev/null 2>"$t/logrotate.err" && echo "logrotate=ok" || { echo "logrotate=failed"; cat "$t/logrotate.err"; }
else
    echo "logrotate=absent"
fi

chroot "$r" dpkg --purge vaultgate
echo "after=$(chroot "$r" dpkg-query -W -f='${db:Status-Abbrev}' vaultgate 2>/dev/null || echo gone)"
left=""
for p in /usr/bin/vaultgate /etc/vaultgate /etc/logrotate.d/vaultgate \
    /lib/systemd/system/vaultgate-vault.service /lib/systemd/system/vaultgate-proxy.service \
    /usr/share/doc/vaultgate /var/log/vaultgate; do
    [ -e "$r$p" ] && left="$left $p"
done
echo "left=$left"
echo "kept=$(stat -c '%U %a' "$r/var/lib/vaultgate")"
"#;

#[test]
fn the_debian_package_installs_verifies_and_purges_in_a_throwaway_root() {
    common::require_root("it mounts an overlay root and runs dpkg in it");
    common::require_tool("dpkg-deb", "dpkg");
    common::require_tool("systemd-analyze", "systemd");
    common::require_tool("unshare", "util-linux");
    let dir = tempfile::Builder::new()
        .prefix("vg-deb-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let deb = dir.path().join("vaultgate.deb");
    build_deb(&deb);

    let contents = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    let contents = String::from_utf8_lossy(&contents.stdout);
    for f in [
        "./usr/bin/vaultgate",
        "./etc/vaultgate/vault.toml",
        "./etc/vaultgate/proxy.toml",
        "./lib/systemd/system/vaultgate-vault.service",
        "./lib/systemd/system/vaultgate-proxy.service",
        "./etc/logrotate.d/vaultgate",
    ] {
        assert!(contents.contains(f), "{f} not in the package:\n{contents}");
    }

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mnt");
    let o = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            IN_THROWAWAY_ROOT,
            "sh",
        ])
        .arg(&deb)
        .arg(&mnt)
        .output()
        .expect("run unshare");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "in the throwaway root:\n{out}\n{err}");
    let all = format!("{out}\n{err}");
    println!("{all}");

    assert_eq!(field(&out, "status").trim(), "ii", "{all}");
    assert!(
        field(&out, "groups")
            .split_whitespace()
            .any(|g| g == "vaultgate"),
        "the proxy's user is in the vault socket's group: {all}"
    );
    assert_eq!(field(&out, "state"), "vaultgate:vaultgate 700", "{all}");
    assert_eq!(field(&out, "logdir"), "vaultgate-proxy:adm 750", "{all}");
    let conffiles = field(&out, "conffiles");
    for c in [
        "/etc/vaultgate/vault.toml",
        "/etc/vaultgate/proxy.toml",
        "/etc/logrotate.d/vaultgate",
    ] {
        assert!(conffiles.contains(c), "{c} is not a conffile: {conffiles}");
    }
    assert!(
        field(&out, "version").contains(env!("CARGO_PKG_VERSION")),
        "{all}"
    );
    assert_eq!(field(&out, "verify"), "0", "{all}");
    // systemd-analyze prints nothing for units it accepts.
    assert!(
        !err.contains("vaultgate-"),
        "systemd-analyze verify complained:\n{err}"
    );
    assert_ne!(field(&out, "logrotate"), "failed", "{all}");

    assert_eq!(field(&out, "after").trim(), "gone", "{all}");
    assert_eq!(field(&out, "left"), "", "purge left files: {all}");
    // The keys are never removed by the package manager.
    assert_eq!(field(&out, "kept"), "vaultgate 700", "{all}");
}
