//! `[vault] user`: started as root, the vault binds its socket and makes
//! its state dir, then switches to the user for good, and everything it
//! does afterwards (signing, rotating, auditing, restarting) works as
//! that user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::common::vault::{run_cli, user_config, Opts, VaultProc};
use crate::common::{self, assert_not_dumpable, assert_runs_as, require_root, require_user};

/// Owner uid, group and permission bits of `path`.
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
}

#[test]
fn a_vault_started_as_root_serves_as_its_user_and_keeps_its_state() {
    require_root("the vault must start as root to switch users");
    let (nobody, nogroup) = require_user("nobody");
    let (_, www_gid) = require_user("www-data");
    // root administers; the `owner` grant is whoever the vault serves as:
    // nobody, not the root that started it.
    let config = user_config(
        "nobody",
        www_gid,
        &[("owner", r#""own-*""#, r#""sign", "public-key""#)],
    );
    let mut v = VaultProc::start_with(Opts {
        config: Some(config),
        metrics: true,
        ..Opts::default()
    });
    let pid = v.child.id() as i32;
    assert_runs_as(pid, nobody, nogroup, &[nogroup]);
    assert_not_dumpable(pid, nobody, nogroup);

    // It signs, rotates and audits as nobody.
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "create", "own-a", "--type", "ed25519"]);
    let sig = v.cli_stdin(
        &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    assert!(
        sig.status.success(),
        "{}",
        String::from_utf8_lossy(&sig.stderr)
    );
    v.ok(&["key", "rotate", "web"]);
    let socket = v.socket.clone();
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(common::bin());
        cmd.args(args).uid(nobody).gid(nogroup).current_dir("/");
        run_cli(&mut cmd, &socket, b"message")
    };
    // The vault's own user is its `owner`; a uid that is neither gets
    // nothing (www-data's group may connect, no grant names it).
    let own = as_nobody(&["key", "sign", "own-a", "--scheme", "ed25519"]);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    let not_own = as_nobody(&["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"]);
    assert!(String::from_utf8_lossy(&not_own.stderr).contains("denied"));
    v.ok(&["audit", "verify"]);
    let log = v.audit_log();
    assert!(log.lines().any(|l| l.contains(&format!("\"uid\":{nobody}"))
        && l.contains("\"op\":\"sign\"")
        && l.contains("\"key\":\"own-a\"")
        && l.contains("\"result\":\"ok\"")));

    // Everything in the state dir is nobody's, with its narrow mode; the
    // socket is nobody's too, in the configured group.
    assert_eq!(owner_and_mode(&v.state), (nobody, nogroup, 0o700));
    for f in [
        "master.key",
        "audit.log",
        "keys/web.json",
        "keys/own-a.json",
    ] {
        let (uid, _, mode) = owner_and_mode(&v.state.join(f));
        assert_eq!((uid, mode), (nobody, 0o600), "{f}");
    }
    assert_eq!(owner_and_mode(&v.socket), (nobody, www_gid, 0o660));

    // Restarted (after a crash), it finds its state and switches again.
    let public = v.ok(&["key", "public", "web"]);
    v.restart();
    assert_eq!(v.ok(&["key", "public", "web"]), public);
    let own = as_nobody(&["key", "sign", "own-a", "--scheme", "ed25519"]);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert_runs_as(v.child.id() as i32, nobody, nogroup, &[nogroup]);
    v.ok(&["audit", "verify"]);
}

#[test]
fn a_state_dir_that_is_not_the_users_is_refused_by_name() {
    require_root("the vault must start as root to switch users");
    let (nobody, nogroup) = require_user("nobody");
    let (www, www_gid) = require_user("www-data");
    let dir = tempfile::Builder::new()
        .prefix("vg-priv-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = dir.path().join("state");
    let vault = |state: &Path, user: &str| {
        Command::new(common::bin())
            .args(["vault", "--user", user, "--socket"])
            .arg(dir.path().join("v.sock"))
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", "warn")
            .current_dir("/")
            .output()
            .expect("run vault")
    };
    let refused = |out: std::process::Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // root's dir (as a run without `user` leaves it): refused, naming
    // the dir, its owner and the user expected, with the fix.
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = refused(vault(&state, "nobody"));
    let d = state.display();
    assert!(
        err.contains(&format!(
            "state dir {d}: {d} is owned by root (uid 0), not by the vault's user \"nobody\""
        )) && err.contains(&format!("chown -R nobody: {d}")),
        "{err}"
    );
    // the dir is nobody's but a file in it is not: that file is named
    std::os::unix::fs::chown(&state, Some(nobody), Some(nogroup)).unwrap();
    std::fs::write(state.join("audit.log"), b"").unwrap();
    let err = refused(vault(&state, "nobody"));
    assert!(
        err.contains(&format!("{d}/audit.log is owned by root (uid 0)")),
        "{err}"
    );
    // another user's dir: the same
    std::fs::remove_file(state.join("audit.log")).unwrap();
    std::os::unix::fs::chown(&state, Some(www), Some(www_gid)).unwrap();
    let err = refused(vault(&state, "nobody"));
    assert!(err.contains("is owned by www-data (uid 33)"), "{err}");
    // a user that does not exist
    let err = refused(vault(&state, "no-such-user-vg"));
    assert!(
        err.contains("--user: unknown user \"no-such-user-vg\""),
        "{err}"
    );

    // Started as www-data, it cannot become nobody: a clear error, and
    // nothing is created.
    let fresh = dir.path().join("fresh");
    let out = Command::new(common::bin())
        .args(["vault", "--user", "nobody", "--socket"])
        .arg(dir.path().join("w.sock"))
        .arg("--state-dir")
        .arg(&fresh)
        .uid(www)
        .gid(www_gid)
        .current_dir("/")
        .output()
        .expect("run vault");
    let err = refused(out);
    assert!(
        err.contains("cannot switch to user \"nobody\" (uid 65534): running as uid 33, not root"),
        "{err}"
    );
    assert!(!fresh.exists() && !dir.path().join("w.sock").exists());

    // Started as its user already, it runs (no switch needed) and is
    // still hardened.
    let v = VaultProc::start_with(Opts {
        args: vec!["--user".into(), "nobody".into()],
        as_user: Some((nobody, nogroup)),
        state_dir: Some(dir.path().join("own")),
        ..Opts::default()
    });
    let pid = v.child.id() as i32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert_not_dumpable(pid, nobody, nogroup);
}
