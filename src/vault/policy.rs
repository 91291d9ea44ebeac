//! Who may do what: grants from the config, matched against the caller's
//! peer credentials or verified client certificate. Deny by default;
//! root is an ordinary uid here.

use std::sync::Arc;

use wildmatch::WildMatch;

use crate::config::vault::{CaRight, Grant, Principal};
use crate::protocol::Op;

/// A caller: a process on this host, as the kernel reported it on
/// connect, or a peer over mutual TLS, as its verified certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Local(Local),
    Remote(Remote),
}

/// A caller on the Unix socket: uid, gid and pid (`SO_PEERCRED`) and
/// supplementary groups (`SO_PEERGROUPS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Shared: a connection's caller goes into every request's audit event.
    pub groups: Arc<[u32]>,
}

/// A caller over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The verified client certificate's URI SAN (else its first DNS SAN);
    /// `None` before (or without) a verified certificate, which no grant
    /// names.
    pub identity: Option<Arc<str>>,
    pub peer: std::net::SocketAddr,
}

/// Whom connection limits and turns are counted for: a uid, or a
/// certificate identity (every remote caller without one counts as one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Party {
    Uid(u32),
    Cert(Option<Arc<str>>),
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Party::Uid(uid) => write!(f, "uid {uid}"),
            Party::Cert(Some(id)) => write!(f, "cert:{id}"),
            Party::Cert(None) => f.write_str("a TLS peer with no verified certificate"),
        }
    }
}

impl Caller {
    /// A local caller in no supplementary group.
    pub fn new(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        Caller::Local(Local {
            uid,
            gid,
            pid,
            groups: Arc::from([]),
        })
    }

    pub fn local(&self) -> Option<&Local> {
        match self {
            Caller::Local(l) => Some(l),
            Caller::Remote(_) => None,
        }
    }

    pub fn remote(&self) -> Option<&Remote> {
        match self {
            Caller::Remote(r) => Some(r),
            Caller::Local(_) => None,
        }
    }

    pub fn party(&self) -> Party {
        match self {
            Caller::Local(l) => Party::Uid(l.uid),
            Caller::Remote(r) => Party::Cert(r.identity.clone()),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Local(l) => match l.pid {
                Some(pid) => write!(f, "uid {} (pid {pid})", l.uid),
                None => write!(f, "uid {}", l.uid),
            },
            Caller::Remote(r) => write!(f, "{} from {}", self.party(), r.peer),
        }
    }
}

impl Local {
    /// Whether the caller is in group `gid`, as the kernel decides for
    /// file access: its gid or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

struct CompiledGrant {
    principal: Principal,
    /// A `cert:` principal's pattern.
    cert: Option<WildMatch>,
    keys: Vec<WildMatch>,
    ops: Vec<Op>,
    ca: Vec<CaRight>,
}

impl CompiledGrant {
    /// Whether the grant is for `caller`.
    fn names(&self, caller: &Caller) -> bool {
        // A uid grant never names a remote caller, a certificate grant
        // never a local one.
        match (&self.principal, caller) {
            (Principal::Uid(u), Caller::Local(l)) => *u == l.uid,
            (Principal::Gid(gid), Caller::Local(l)) => l.in_group(*gid),
            (Principal::Cert(_), Caller::Remote(r)) => match (&self.cert, &r.identity) {
                (Some(pattern), Some(id)) => pattern.matches(id),
                _ => false,
            },
            // `Owner` is resolved to a uid in `Policy::new`
            _ => false,
        }
    }

    /// Whether the grant is for `caller` and, given a key, covers it.
    fn covers(&self, caller: &Caller, key: Option<&str>) -> bool {
        self.names(caller)
            && match key {
                Some(k) => self.keys.iter().any(|p| p.matches(k)),
                None => true,
            }
    }
}

pub struct Policy {
    grants: Vec<CompiledGrant>,
}

impl Policy {
    /// Builds the policy. With no grants configured, the vault's own uid
    /// (`owner`) gets every operation on every key: the embedded default.
    /// `owner_uid` is the uid the vault serves as: after a switch to its
    /// `user`, that user's, never the root it started as.
    pub fn new(grants: &[Grant], owner_uid: u32) -> Policy {
        let default = [Grant {
            principal: Principal::Uid(owner_uid),
            keys: vec!["*".into()],
            ops: Op::ALL.to_vec(),
            ca: CaRight::ALL.to_vec(),
        }];
        let grants = if grants.is_empty() {
            &default[..]
        } else {
            grants
        };
        Policy {
            grants: grants
                .iter()
                .map(|g| CompiledGrant {
                    principal: match &g.principal {
                        Principal::Owner => Principal::Uid(owner_uid),
                        p => p.clone(),
                    },
                    cert: match &g.principal {
                        Principal::Cert(pattern) => Some(WildMatch::new(pattern)),
                        _ => None,
                    },
                    keys: g.keys.iter().map(|k| WildMatch::new(k)).collect(),
                    ops: g.ops.clone(),
                    ca: g.ca.clone(),
                })
                .collect(),
        }
    }

    /// Whether any grant names `caller`. One that none names can only be
    /// refused (or pinged), so the server gives such callers less room.
    pub fn names(&self, caller: &Caller) -> bool {
        self.grants.iter().any(|g| g.names(caller))
    }

    /// Whether `caller` may perform `op` on `key`. Ping needs no grant.
    /// For key-less operations (list, audit verify) any grant of that op
    /// suffices; list then shows only keys the caller may list.
    pub fn allows(&self, caller: &Caller, op: Op, key: Option<&str>) -> bool {
        if op == Op::Ping {
            return true;
        }
        self.grants
            .iter()
            .any(|g| g.ops.contains(&op) && g.covers(caller, key))
    }

    /// Whether `caller` may have CA key `ca` sign a certificate of the kind
    /// `right` names. Separate from [`Policy::allows`]: a grant of every
    /// operation on the CA key (`admin` included) is not this.
    pub fn allows_ca(&self, caller: &Caller, right: CaRight, ca: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.ca.contains(&right) && g.covers(caller, Some(ca)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vault::{admin_ops, use_ops};

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller::new(uid, gid, None)
    }

    #[test]
    fn use_and_admin_are_separate_and_deny_is_default() {
        let p = Policy::new(
            &[
                Grant {
                    principal: Principal::Uid(33),
                    keys: vec!["web*".into()],
                    ops: use_ops(),
                    ca: Vec::new(),
                },
                Grant {
                    principal: Principal::Gid(50),
                    keys: vec!["*".into()],
                    ops: admin_ops(),
                    ca: Vec::new(),
                },
            ],
            0,
        );
        assert!(p.allows(&caller(33, 33), Op::Sign, Some("web1")));
        assert!(!p.allows(&caller(33, 33), Op::Sign, Some("api")));
        assert!(!p.allows(&caller(33, 33), Op::Rotate, Some("web1")));
        assert!(p.allows(&caller(1000, 50), Op::Rotate, Some("web1")));
        assert!(!p.allows(&caller(1000, 50), Op::Sign, Some("web1")));
        // root is not special once grants are configured
        assert!(!p.allows(&caller(0, 0), Op::Sign, Some("web1")));
        assert!(p.allows(&caller(0, 0), Op::Ping, None));
        assert!(p.names(&caller(33, 1)) && p.names(&caller(7, 50)));
        assert!(!p.names(&caller(0, 0)));
    }

    #[test]
    fn no_grants_means_the_owner_only() {
        let p = Policy::new(&[], 1000);
        assert!(p.allows(&caller(1000, 1), Op::Create, Some("x")));
        assert!(!p.allows(&caller(1001, 1), Op::Sign, Some("x")));
        // a configured `owner` grant is the uid the vault serves as
        let owner = Grant {
            principal: Principal::Owner,
            keys: vec!["*".into()],
            ops: use_ops(),
            ca: Vec::new(),
        };
        let p = Policy::new(&[owner], 65534);
        assert!(p.allows(&caller(65534, 1), Op::Sign, Some("x")));
        assert!(!p.allows(&caller(0, 0), Op::Sign, Some("x")));
    }

    #[test]
    fn a_gid_grant_covers_members_of_the_group_too() {
        let p = Policy::new(
            &[Grant {
                principal: Principal::Gid(50),
                keys: vec!["*".into()],
                ops: use_ops(),
                ca: Vec::new(),
            }],
            0,
        );
        let member = Caller::Local(Local {
            groups: Arc::from([20, 50]),
            uid: 1000,
            gid: 1000,
            pid: None,
        });
        assert!(p.allows(&member, Op::Sign, Some("web1")));
        let outsider = Caller::Local(Local {
            groups: Arc::from([20, 51]),
            uid: 1000,
            gid: 1000,
            pid: None,
        });
        assert!(!p.allows(&outsider, Op::Sign, Some("web1")));
    }

    #[test]
    fn cert_grants_name_remote_identities_only() {
        let p = Policy::new(
            &[Grant {
                principal: Principal::Cert("spiffe://example/proxy/*".into()),
                keys: vec!["*".into()],
                ops: use_ops(),
                ca: Vec::new(),
            }],
            0,
        );
        let remote = |id: Option<&str>| {
            Caller::Remote(Remote {
                identity: id.map(Arc::from),
                peer: "127.0.0.1:1".parse().unwrap(),
            })
        };
        let edge = remote(Some("spiffe://example/proxy/edge-1"));
        assert!(p.allows(&edge, Op::Sign, Some("web")));
        assert!(!p.allows(&edge, Op::Rotate, Some("web")));
        assert!(!p.names(&remote(Some("spiffe://example/admin"))));
        assert!(!p.names(&remote(None)));
        // the vault's own uid (0 here) is not a certificate
        assert!(!p.names(&caller(0, 0)));
        // nor is a remote caller ever a uid
        let owner = Policy::new(&[], 0);
        assert!(!owner.names(&edge));
    }

    #[test]
    fn admin_on_a_ca_key_is_not_issuing_with_it() {
        let grant = |ops: Vec<Op>, ca: Vec<CaRight>| Grant {
            principal: Principal::Uid(7),
            keys: vec!["app-*".into()],
            ops,
            ca,
        };
        let admin = Policy::new(&[grant(admin_ops(), Vec::new())], 0);
        let me = caller(7, 7);
        assert!(admin.allows(&me, Op::CertIssue, Some("app-ca")));
        assert!(!admin.allows_ca(&me, CaRight::Issue, "app-ca"));
        assert!(!admin.allows_ca(&me, CaRight::IssueCa, "app-ca"));
        let every_op = Policy::new(&[grant(Op::ALL.to_vec(), Vec::new())], 0);
        assert!(!every_op.allows_ca(&me, CaRight::Issue, "app-ca"));

        let leaves = Policy::new(&[grant(Vec::new(), vec![CaRight::Issue])], 0);
        assert!(leaves.allows_ca(&me, CaRight::Issue, "app-ca"));
        assert!(!leaves.allows_ca(&me, CaRight::IssueCa, "app-ca"));
        assert!(!leaves.allows_ca(&me, CaRight::Issue, "web-ca"));
        assert!(!leaves.allows_ca(&caller(8, 8), CaRight::Issue, "app-ca"));
        // a CA right is no operation on the key
        assert!(!leaves.allows(&me, Op::CertIssue, Some("app-ca")));

        let cas = Policy::new(&[grant(Vec::new(), vec![CaRight::IssueCa])], 0);
        assert!(cas.allows_ca(&me, CaRight::IssueCa, "app-ca"));
        assert!(!cas.allows_ca(&me, CaRight::Issue, "app-ca"));

        // the embedded default (no grants) is everything, CA rights too
        let default = Policy::new(&[], 7);
        assert!(default.allows_ca(&me, CaRight::Issue, "any"));
        assert!(default.allows_ca(&me, CaRight::IssueCa, "any"));
    }
}
