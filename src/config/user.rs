//! `user` / `group` of `[vault]` and `[proxy]`: the account a process
//! switches to, for good, once it has done what needs root (binding
//! sockets and privileged ports, preparing its directories).

use serde_spanned::Spanned;

use super::{ConfigError, Source};

/// An account to switch to, resolved when the config is read (a name that
/// does not exist is a config error with its location, not a start-up
/// surprise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user name, for messages and for its supplementary groups.
    pub name: String,
    pub uid: u32,
    /// `group` if given, else the user's primary group.
    pub gid: u32,
}

/// Resolves `user` (and `group`) of one section. `group` without `user`
/// is an error: there is nothing to give it to.
pub fn resolve(
    src: &Source,
    user: &Option<Spanned<String>>,
    group: &Option<Spanned<String>>,
) -> Result<Option<RunAs>, ConfigError> {
    let Some(user) = user else {
        return match group {
            Some(g) => Err(src.error(g.span(), "group needs user (the account to switch to)")),
            None => Ok(None),
        };
    };
    let group = match group {
        Some(g) => Some(resolve_group(g.get_ref()).map_err(|e| src.error(g.span(), e))?),
        None => None,
    };
    resolve_user(user.get_ref(), group)
        .map(Some)
        .map_err(|e| src.error(user.span(), e))
}

/// `name` (or a numeric uid) as an account to switch to, with `gid` or
/// the user's primary group. Root is refused: switching to it drops
/// nothing, so it is surely a mistake.
pub fn resolve_user(name: &str, gid: Option<u32>) -> Result<RunAs, String> {
    let user = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    };
    let user = match user {
        Ok(Some(u)) => u,
        Ok(None) => return Err(format!("unknown user {name:?}")),
        Err(e) => return Err(format!("cannot look up user {name:?}: {e}")),
    };
    if user.uid.is_root() {
        return Err(format!(
            "user {name:?} is root: switching to it drops nothing; leave user out to run as root"
        ));
    }
    Ok(RunAs {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: gid.unwrap_or(user.gid.as_raw()),
    })
}

/// A group name or number.
pub fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!("unknown group {name:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{parse, proxy::ProxySettings, vault::VaultSettings};

    #[test]
    fn users_resolve_and_errors_name_their_place() {
        let loaded = parse(Path::new("u.toml"), "[vault]\nuser = \"nobody\"\n".into()).unwrap();
        let s = VaultSettings::from_loaded(&loaded).unwrap();
        let u = s.user.unwrap();
        assert_eq!((u.name.as_str(), u.uid, u.gid), ("nobody", 65534, 65534));

        let e = |text: &str| {
            let loaded = parse(Path::new("u.toml"), text.into()).unwrap();
            VaultSettings::from_loaded(&loaded).unwrap_err().to_string()
        };
        let m = e("[vault]\nuser = \"no-such-user-vg\"\n");
        assert!(
            m.starts_with("u.toml:2:8: unknown user \"no-such-user-vg\""),
            "{m}"
        );
        let m = e("[vault]\nuser = \"nobody\"\ngroup = \"no-such-group-vg\"\n");
        assert!(m.starts_with("u.toml:3:9: unknown group"), "{m}");
        let m = e("[vault]\ngroup = \"nogroup\"\n");
        assert!(m.starts_with("u.toml:2:9: group needs user"), "{m}");
        let m = e("[vault]\nuser = \"root\"\n");
        assert!(m.starts_with("u.toml:2:8: user \"root\" is root"), "{m}");

        let loaded = parse(
            Path::new("p.toml"),
            "[proxy]\nuser = \"no-such-user-vg\"\n".into(),
        )
        .unwrap();
        let m = ProxySettings::from_loaded(&loaded).unwrap_err().to_string();
        assert!(m.starts_with("p.toml:2:8: unknown user"), "{m}");
    }
}
