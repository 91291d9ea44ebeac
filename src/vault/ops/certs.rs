//! Certificates: binding a chain to a key version, CSRs, and issuing
//! (self-signed or by a CA key held here).

use std::sync::Arc;

use super::{check_length, Done, Named, OpError, Vault};
use crate::config::vault::CaRight;
use crate::protocol::{ErrorCode, Op, Response};
use crate::vault::issue;
use crate::vault::keys::Material;
use crate::vault::policy::Caller;
use crate::vault::record::Key;

/// Parameters of `cert-issue`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueParams {
    ca: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    common_name: Option<String>,
    days: Option<u32>,
    #[serde(default)]
    is_ca: bool,
    path_len: Option<u8>,
}

/// Parameters of `cert-sign`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignParams {
    csr: String,
    #[serde(default)]
    uris: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
    days: Option<u32>,
}

/// A client identity is short-lived by default: a fleet reissues, and a
/// lost proxy's certificate stops working by itself.
const CLIENT_DAYS: u32 = 90;

fn issue_error(e: issue::IssueError) -> OpError {
    let code = match e {
        issue::IssueError::NotSigning(_) => ErrorCode::Unsupported,
        issue::IssueError::Rcgen(_) => ErrorCode::Internal,
        _ => ErrorCode::InvalidInput,
    };
    OpError::new(code, e.to_string())
}

impl Vault {
    pub(super) fn cert_install(
        &self,
        name: &str,
        version: Option<u32>,
        chain_pem: &str,
    ) -> Result<Done, OpError> {
        let _guard = self.lock();
        let mut key = (*self.find(name)?).clone();
        let (v, m) = Self::version(&key, version)?;
        issue::check_chain(chain_pem, m).map_err(|e| {
            let message = match e {
                issue::ChainError::Mismatch { cert, key } => format!(
                    "the certificate's public key ({cert}) is not key {name:?} version {v}'s ({key})"
                ),
                e => e.to_string(),
            };
            OpError::new(ErrorCode::InvalidInput, message)
        })?;
        if let Some(r) = key.record.version_mut(v) {
            r.cert_chain = Some(chain_pem.to_owned());
        }
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(v)))
    }

    pub(super) fn cert_csr(
        &self,
        name: &str,
        version: Option<u32>,
        params: &str,
    ) -> Result<Done, OpError> {
        let names: issue::Names = serde_json::from_str(params)
            .map_err(|e| OpError::new(ErrorCode::InvalidInput, format!("CSR parameters: {e}")))?;
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, version)?;
        let csr = issue::csr(m, &names).map_err(issue_error)?;
        Ok(Done::new(Response::Certificate {
            version: v,
            chain_pem: csr,
        })
        .key(name, Some(v)))
    }

    /// Issues a certificate for a key version (self-signed, or by a CA key
    /// held here) and binds it, as `cert_install` would. Errors name the
    /// CA key once one is involved: its use is what the record is about.
    pub(super) fn cert_issue(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<u32>,
        params: &str,
    ) -> Result<Done, (OpError, Named)> {
        let p: IssueParams = serde_json::from_str(params)
            .map_err(|e| OpError::new(ErrorCode::InvalidInput, format!("issue parameters: {e}")))
            .map_err(|e| (e, Named::default()))?;
        let Some(ca) = &p.ca else {
            return self
                .issue_with(name, version, &p, None)
                .map_err(|e| (e, Named::default()));
        };
        let with_ca = |e| (e, Named::ca(ca));
        check_length(ca).map_err(|e| (e, Named::default()))?;
        // Signing with the CA key is a use of it, and a CA certificate
        // a more powerful one: each its own right on the CA key, which
        // `cert-issue` (an admin operation on the subject) is not.
        let right = if p.is_ca {
            CaRight::IssueCa
        } else {
            CaRight::Issue
        };
        self.authorize_ca(caller, Op::CertIssue, right, ca)
            .map_err(with_ca)?;
        let ca_key = self.usable(ca).map_err(with_ca)?;
        let (cv, cm) = Self::version(&ca_key, None).map_err(with_ca)?;
        let chain = Self::chain_of(&ca_key, cv)
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("CA key {ca:?} has no certificate; issue it one with is_ca and no ca"),
                )
            })
            .map_err(with_ca)?;
        let done = self
            .issue_with(name, version, &p, Some((cm, &chain)))
            .map_err(with_ca)?;
        Ok(Done {
            ca: Some((ca.clone(), cv)),
            ..done
        })
    }

    /// `cert_issue` once the CA, if any, is authorized and found.
    fn issue_with(
        &self,
        name: &str,
        version: Option<u32>,
        p: &IssueParams,
        ca: Option<(&Arc<Material>, &str)>,
    ) -> Result<Done, OpError> {
        let _guard = self.lock();
        let mut key = (*self.usable(name)?).clone();
        let (v, m) = Self::version(&key, version)?;
        let m = m.clone();
        // The certificate being replaced: this version's, or the newest
        // earlier version's.
        let previous = key
            .record
            .versions
            .iter()
            .filter(|r| r.version <= v && r.cert_chain.is_some())
            .max_by_key(|r| r.version)
            .and_then(|r| r.cert_chain.clone());
        let names = (!p.names.is_empty() || p.common_name.is_some()).then(|| issue::Names {
            names: p.names.clone(),
            common_name: p.common_name.clone(),
        });
        let chain = issue::issue(issue::Issue {
            subject: &m,
            names,
            previous: previous.as_deref(),
            lifetime: p
                .days
                .map(|d| std::time::Duration::from_secs(u64::from(d) * 86400)),
            ca,
            is_ca: p.is_ca,
            path_len: p.path_len,
        })
        .map_err(issue_error)?;
        if let Some(r) = key.record.version_mut(v) {
            r.cert_chain = Some(chain);
        }
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(v)))
    }

    /// Signs a client certificate for a key held elsewhere with CA key
    /// `ca`. Minting identities the vault's own `cert:` grants trust is
    /// the CA's power, so beside the `cert-sign` grant on the CA key it
    /// takes the CA's `ca-issue` right, as `cert-issue` does.
    pub(super) fn cert_sign(
        &self,
        caller: &Caller,
        ca: &str,
        version: Option<u32>,
        params: &str,
    ) -> Result<Done, OpError> {
        let p: SignParams = serde_json::from_str(params)
            .map_err(|e| OpError::new(ErrorCode::InvalidInput, format!("sign parameters: {e}")))?;
        self.authorize_ca(caller, Op::CertSign, CaRight::Issue, ca)?;
        let ca_key = self.usable(ca)?;
        let (cv, cm) = Self::version(&ca_key, version)?;
        let chain = Self::chain_of(&ca_key, cv).ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("CA key {ca:?} version {cv} has no certificate; issue it one with is_ca"),
            )
        })?;
        let days = p.days.unwrap_or(CLIENT_DAYS);
        let signed = issue::sign_client(issue::Sign {
            csr_pem: &p.csr,
            uris: &p.uris,
            names: &p.names,
            lifetime: std::time::Duration::from_secs(u64::from(days) * 86400),
            ca: (cm, &chain),
        })
        .map_err(issue_error)?;
        Ok(Done::new(Response::Certificate {
            version: cv,
            chain_pem: signed,
        })
        .key(ca, Some(cv)))
    }

    fn chain_of(key: &Key, version: u32) -> Option<String> {
        key.record
            .version(version)
            .and_then(|r| r.cert_chain.clone())
    }

    pub(super) fn cert_get(&self, name: &str, version: Option<u32>) -> Result<Done, OpError> {
        let key = self.find(name)?;
        let (v, _) = Self::version(&key, version)?;
        let chain = key
            .record
            .version(v)
            .and_then(|r| r.cert_chain.clone())
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("no certificate is bound to key {name:?} version {v}"),
                )
            })?;
        Ok(Done::new(Response::Certificate {
            version: v,
            chain_pem: chain,
        })
        .key(name, Some(v)))
    }
}
