//! `[proxy]`: the TLS listener, certificates and their key references,
//! routes, upstreams, limits and timeouts.
//!
//! ```toml
//! [proxy]
//! listen = "127.0.0.1:8443"
//! [[proxy.cert]]
//! names = ["localhost"]
//! cert = "../certs/localhost.pem"
//! key = "vault:default"
//! [[proxy.route]]
//! host = "*"
//! path = "/"
//! upstream = "web"
//! [proxy.upstream.web]
//! backends = ["127.0.0.1:8080", "127.0.0.1:8081 weight=2"]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{duration, ConfigError, Loaded, Location, Source};

/// `listen = "ADDR"` or `listen = ["ADDR", ...]`.
#[derive(Debug, Clone)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// By hand rather than `untagged`, whose error ("did not match any
/// variant of untagged enum") says nothing of what to write.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address as a string, e.g. \"127.0.0.1:8443\", or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// One address or a list; a reload binds the new ones and drains the
    /// ones removed.
    pub listen: Option<Spanned<OneOrMany>>,
    /// Threads serving connections (default: one per core).
    pub workers: Option<Spanned<u32>>,
    pub metrics_listen: Option<Spanned<String>>,
    /// Vault sockets in failover order; default: `[vault].socket`.
    pub vault_sockets: Option<Spanned<Vec<String>>>,
    /// Vault endpoints, `unix:PATH` or `tls://HOST:PORT` (instead of
    /// `vault_sockets`).
    pub vaults: Option<Spanned<Vec<String>>>,
    /// The proxy's side of mutual TLS to `tls://` vaults.
    pub vault_tls: Option<VaultTlsFile>,
    /// Persistent connections per vault socket.
    pub vault_connections: Option<Spanned<u32>>,
    pub sign_timeout: Option<Spanned<String>>,
    /// How long a handshake waits for the vault before handing its worker
    /// thread over to tokio (`block_in_place`).
    pub sign_plain_wait: Option<Spanned<String>>,
    pub min_tls_version: Option<Spanned<String>>,
    /// The certificate name used for clients that send no SNI.
    pub default_server_name: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_header_size: Option<Spanned<u32>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    /// TLS 1.2 session-id cache entries; 0 turns the cache off.
    pub session_cache_size: Option<Spanned<u32>>,
    /// Session tickets (TLS 1.3 and 1.2); on by default. Off only to
    /// measure full handshakes.
    pub session_tickets: Option<bool>,
    /// How often the ticket key is replaced; a ticket is accepted for at
    /// most twice this.
    pub ticket_rotation: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    /// Write the access log to this file (appended; reopened on SIGUSR1)
    /// instead of the process log.
    pub access_log_file: Option<Spanned<String>>,
    /// "text" (key=value), "combined" (nginx's) or "json".
    pub access_log_format: Option<Spanned<String>>,
    /// Log a warning while a certificate expires within this.
    pub cert_expiry_warning: Option<Spanned<String>>,
    /// Where the running process writes its pid, for `vaultgate reload`.
    pub pid_file: Option<Spanned<String>>,
    /// Started as root, switch to this user (name or uid) for good once
    /// the listeners are bound and the pid file written.
    pub user: Option<Spanned<String>>,
    /// Primary group after the switch (default: the user's).
    pub group: Option<Spanned<String>>,
    /// Any of "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    /// "forwarded".
    pub forwarded_headers: Option<Spanned<Vec<String>>>,
    /// What happens to the client's X-Real-IP, True-Client-IP and
    /// X-Client-IP: "overwrite" (with its address), "drop" or "pass".
    pub client_ip_headers: Option<Spanned<String>>,
    /// Plain-HTTP listeners that answer every request with a redirect to
    /// the same URL over HTTPS.
    pub redirect_listen: Option<Spanned<OneOrMany>>,
    /// `Strict-Transport-Security` on every HTTPS answer, e.g.
    /// "max-age=63072000; includeSubDomains".
    pub hsts: Option<Spanned<String>>,
    /// Fields set on, and removed from, every answer to clients.
    pub response_headers: Option<ResponseHeadersFile>,
    /// Resolve dot segments and decode escaped unreserved characters in
    /// request paths before routing, and forward the result; refuse
    /// escapes backends read differently.
    pub normalize_path: Option<bool>,
    /// Runs of slashes in request paths are one slash.
    pub merge_slashes: Option<bool>,
    /// Protocols a request may switch to (`Upgrade`); never "h2c".
    pub upgrade_protocols: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub cert: Vec<CertFile>,
    #[serde(default)]
    pub route: Vec<RouteFile>,
    #[serde(default)]
    pub upstream: BTreeMap<String, UpstreamFile>,
}

/// `[proxy.response_headers]`: `set = { NAME = "VALUE", … }` adds or
/// replaces, `remove = ["Server", …]` drops the backend's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseHeadersFile {
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    pub remove: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// Host names this certificate serves; `*.example.com` wildcards allowed.
    pub names: Spanned<Vec<String>>,
    /// PEM chain, leaf first.
    pub cert: Spanned<String>,
    /// `vault:NAME` or `file:PATH`.
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Host name or `*.suffix` or `*` (any).
    pub host: Option<Spanned<String>>,
    /// Path prefix; default "/".
    pub path: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// "HOST:PORT" optionally followed by " weight=N".
    pub backends: Spanned<Vec<String>>,
    /// "round-robin", "least-conn", "hash:client-ip" or "hash:header:NAME".
    pub balance: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    /// How long a backend that refused a connection stays out when no
    /// active health check would bring it back.
    pub fail_timeout: Option<Spanned<String>>,
    /// Speak HTTP/2 without TLS (h2c) to these backends.
    pub h2c: Option<bool>,
    /// Start each backend connection with a PROXY protocol v2 header;
    /// such connections are private to one client connection.
    pub proxy_protocol: Option<bool>,
    /// How often backends given by host name are resolved again.
    pub resolve_every: Option<Spanned<String>>,
    pub health: Option<HealthFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy: Option<Spanned<u32>>,
    pub unhealthy: Option<Spanned<u32>>,
}

/// Where a certificate's private key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// Held by the vault: the proxy only ever asks for signatures.
    Vault(String),
    /// A PEM file loaded into the proxy process: no isolation.
    File(PathBuf),
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Vault(n) => write!(f, "vault:{n}"),
            KeyRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone)]
pub struct CertSpec {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: KeyRef,
    /// Where the entry is written, for `check` errors.
    pub cert_at: Location,
    pub key_at: Location,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub host: HostPattern,
    pub path_prefix: String,
    pub upstream: String,
}

/// A host name pattern: exact, `*.suffix` (one or more labels) or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// The suffix including its leading dot: ".example.com".
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.to_ascii_lowercase();
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if valid_host(rest) {
                return Ok(HostPattern::Wildcard(format!(".{rest}")));
            }
        } else if valid_host(&s) {
            return Ok(HostPattern::Exact(s));
        }
        Err(format!("invalid host name {s:?}"))
    }

    /// `host` must already be lower case, without port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    HashClientIp,
    HashHeader(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// A backend given by host name (`app.internal:8080`): resolved when the
/// config is loaded, each address a backend, and again every
/// `resolve_every` while the proxy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBackend {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// A name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("backend {host}:{port}: cannot resolve: {source}")]
pub struct ResolveError {
    pub host: String,
    pub port: u16,
    pub source: std::io::Error,
}

impl NamedBackend {
    /// Its addresses now (blocking: the system resolver), sorted.
    pub fn resolve(&self) -> Result<Vec<BackendSpec>, ResolveError> {
        use std::net::ToSocketAddrs;
        let mut addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|source| ResolveError {
                host: self.host.clone(),
                port: self.port,
                source,
            })?
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        Ok(addrs
            .into_iter()
            .map(|addr| BackendSpec {
                addr,
                weight: self.weight,
            })
            .collect())
    }
}

impl UpstreamSpec {
    /// The backends given by address, then every address of each named
    /// one, resolved now.
    pub fn resolved_backends(&self) -> Result<Vec<BackendSpec>, ResolveError> {
        let mut all = self.fixed.clone();
        for n in &self.named {
            all.extend(n.resolve()?);
        }
        Ok(all)
    }
}

#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    /// What the proxy sends to: the backends given by address, and those
    /// the named ones resolved to when last resolved.
    pub backends: Vec<BackendSpec>,
    /// The backends given by address.
    pub fixed: Vec<BackendSpec>,
    /// The backends given by name, and how often to resolve them again.
    pub named: Vec<NamedBackend>,
    pub resolve_every: Duration,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub fail_timeout: Duration,
    pub h2c: bool,
    pub proxy_protocol: bool,
    pub health: Option<HealthSpec>,
}

/// The defaults of `[proxy.upstream.NAME.health]`.
impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: "/".to_owned(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy: 2,
            unhealthy: 2,
        }
    }
}

/// The defaults of `[proxy.upstream.NAME]` (it has no backends until the
/// file names some).
impl Default for UpstreamSpec {
    fn default() -> Self {
        UpstreamSpec {
            name: String::new(),
            backends: Vec::new(),
            fixed: Vec::new(),
            named: Vec::new(),
            resolve_every: Duration::from_secs(30),
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            fail_timeout: Duration::from_secs(10),
            h2c: false,
            proxy_protocol: false,
            health: None,
        }
    }
}

/// What the proxy changes in every answer to clients (after the backend's
/// hop-by-hop fields are gone): fields removed, then fields set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    pub remove: Vec<http::HeaderName>,
    /// `hsts` comes first, then `[proxy.response_headers] set`.
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl ResponseHeaders {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    pub fn apply(&self, h: &mut http::HeaderMap) {
        for name in &self.remove {
            h.remove(name);
        }
        for (name, value) in &self.set {
            h.insert(name.clone(), value.clone());
        }
    }
}

/// How request paths are put in one form before routes match them
/// (`normalize_path`, `merge_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// RFC 3986 dot segments resolved, unreserved escapes decoded, and
    /// ambiguous escapes refused.
    pub normalize: bool,
    pub merge_slashes: bool,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            normalize: true,
            merge_slashes: true,
        }
    }
}

/// Which proxy headers are added to requests sent to backends, and what
/// becomes of the client-address headers a client sent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedHeaders {
    pub x_forwarded_for: bool,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
    pub forwarded: bool,
    pub client_ip: ClientIpHeaders,
}

/// X-Real-IP, True-Client-IP and X-Client-IP: no standard says who sets
/// them, so a backend (or its framework's "real IP" setting) that reads
/// one believes whoever wrote it. Passed on as the client sent them, any
/// client could name any address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeaders {
    /// Each set to the connecting client's address, whatever the client
    /// sent: a backend may trust them.
    Overwrite,
    /// Removed: the backend sees none.
    Drop,
    /// Left as the client sent them: only for a backend that ignores them.
    Pass,
}

impl ClientIpHeaders {
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeaders::Overwrite => "overwrite",
            ClientIpHeaders::Drop => "drop",
            ClientIpHeaders::Pass => "pass",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultTlsFile {
    /// CA certificates (PEM) the vaults' certificates are checked against.
    pub ca: Spanned<String>,
    /// The proxy's client certificate chain (PEM).
    pub cert: Spanned<String>,
    /// Its private key (PEM file).
    pub key: Spanned<String>,
}

/// `[proxy.vault_tls]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the proxy needs to start, validated.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Every address to accept on, in the order given.
    pub listen: Vec<SocketAddr>,
    /// Tokio worker threads for connections; `None`: one per core.
    pub workers: Option<usize>,
    pub metrics_listen: Option<SocketAddr>,
    /// Vault endpoints in failover order.
    pub vaults: Vec<crate::signer::Endpoint>,
    pub vault_tls: Option<VaultTls>,
    pub vault_connections: usize,
    pub sign_timeout: Duration,
    pub sign_plain_wait: Duration,
    pub min_tls_version: TlsVersion,
    pub default_server_name: Option<String>,
    pub limits: Limits,
    pub session_cache_size: usize,
    pub session_tickets: bool,
    pub ticket_rotation: Duration,
    pub access_log: bool,
    /// `None`: access lines go to the process log.
    pub access_log_file: Option<PathBuf>,
    pub access_log_format: AccessLogFormat,
    /// `[log]`: the process log's level, applied at start and on reload.
    pub log: super::log::LogSettings,
    pub cert_expiry_warning: Duration,
    pub pid_file: Option<PathBuf>,
    /// The account to switch to after binding.
    pub user: Option<super::user::RunAs>,
    pub forwarded: ForwardedHeaders,
    /// Plain-HTTP listeners that redirect to HTTPS.
    pub redirect_listen: Vec<SocketAddr>,
    pub response_headers: ResponseHeaders,
    pub path_rules: PathRules,
    /// Lower-case protocol names a request may upgrade to.
    pub upgrade_protocols: Vec<String>,
    pub certs: Vec<CertSpec>,
    pub routes: Vec<RouteSpec>,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_header_size: 64 * 1024,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for ForwardedHeaders {
    fn default() -> Self {
        ForwardedHeaders {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            forwarded: true,
            client_ip: ClientIpHeaders::Overwrite,
        }
    }
}

/// Every `[proxy]` default in one place (docs/configuration.md lists them,
/// and a test holds the two together). Certificates, routes and upstreams
/// have none: a proxy needs at least one of each.
impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            workers: None,
            metrics_listen: None,
            vaults: vec![crate::signer::Endpoint::Unix(PathBuf::from(
                super::vault::DEFAULT_SOCKET,
            ))],
            vault_tls: None,
            vault_connections: 2,
            sign_timeout: Duration::from_millis(100),
            sign_plain_wait: Duration::from_millis(2),
            min_tls_version: TlsVersion::Tls12,
            default_server_name: None,
            limits: Limits::default(),
            session_cache_size: 20_000,
            session_tickets: true,
            ticket_rotation: Duration::from_secs(6 * 3600),
            access_log: true,
            access_log_file: None,
            access_log_format: AccessLogFormat::Text,
            log: super::log::LogSettings::default(),
            cert_expiry_warning: Duration::from_secs(14 * 86400),
            pid_file: None,
            user: None,
            forwarded: ForwardedHeaders::default(),
            redirect_listen: Vec::new(),
            response_headers: ResponseHeaders::default(),
            path_rules: PathRules::default(),
            upgrade_protocols: vec!["websocket".to_owned()],
            certs: Vec::new(),
            routes: Vec::new(),
            upstreams: BTreeMap::new(),
        }
    }
}

impl ProxySettings {
    /// Validates `[proxy]`. A missing section is an error: a proxy with no
    /// certificate or upstream cannot serve anything.
    pub fn from_loaded(loaded: &Loaded) -> Result<ProxySettings, ConfigError> {
        let src = loaded.source();
        let Some(p) = &loaded.file.proxy else {
            return Err(src.file_error("no [proxy] section"));
        };
        let d = ProxySettings::default();
        // In the order of the file's keys, so the first error reported is
        // the first in the docs' table.
        let vault = super::vault::VaultSettings::from_loaded(loaded)?;
        let user = super::user::resolve(&src, &p.user, &p.group)?;
        let listen = match &p.listen {
            Some(l) => listen_addrs(&src, l)?,
            None => d.listen,
        };
        let workers = p
            .workers
            .as_ref()
            .map(|_| positive(&src, &p.workers, 1, "workers"))
            .transpose()?
            .map(|n| n as usize);
        let metrics_listen = p
            .metrics_listen
            .as_ref()
            .map(|m| parse_addr(&src, m, "metrics_listen"))
            .transpose()?;
        let (vaults, vault_connections) = vault_client(loaded, &src, p, &vault)?;
        let vault_tls = vault_tls(loaded, &src, p, &vaults)?;
        let sign_timeout = duration::parse_opt(&src, &p.sign_timeout)?.unwrap_or(d.sign_timeout);
        let sign_plain_wait =
            duration::parse_opt(&src, &p.sign_plain_wait)?.unwrap_or(d.sign_plain_wait);
        let min_tls_version =
            min_tls_version(&src, &p.min_tls_version)?.unwrap_or(d.min_tls_version);
        let limits = limits(&src, p, d.limits)?;
        let mut forwarded = forwarded_headers(&src, &p.forwarded_headers)?;
        if let Some(c) = client_ip_headers(&src, &p.client_ip_headers)? {
            forwarded.client_ip = c;
        }
        let redirect_listen = match &p.redirect_listen {
            Some(l) => listen_addrs(&src, l)?,
            None => d.redirect_listen,
        };
        let response_headers = response_headers(&src, p)?;
        let certs = certs(loaded, &src, p)?;
        let default_server_name = default_server_name(&src, p, &certs)?;
        let path_rules = PathRules {
            normalize: p.normalize_path.unwrap_or(d.path_rules.normalize),
            merge_slashes: p.merge_slashes.unwrap_or(d.path_rules.merge_slashes),
        };
        let upgrade_protocols =
            upgrade_protocols(&src, &p.upgrade_protocols)?.unwrap_or(d.upgrade_protocols);
        let (upstreams, routes) = upstreams_and_routes(&src, p, path_rules)?;
        Ok(ProxySettings {
            listen,
            workers,
            metrics_listen,
            vaults,
            vault_tls,
            vault_connections,
            sign_timeout,
            sign_plain_wait,
            min_tls_version,
            default_server_name,
            limits,
            session_cache_size: p
                .session_cache_size
                .as_ref()
                .map_or(d.session_cache_size, |s| *s.get_ref() as usize),
            session_tickets: p.session_tickets.unwrap_or(d.session_tickets),
            ticket_rotation: duration::parse_opt(&src, &p.ticket_rotation)?
                .unwrap_or(d.ticket_rotation),
            access_log: p.access_log.unwrap_or(d.access_log),
            access_log_file: p
                .access_log_file
                .as_ref()
                .map(|f| loaded.resolve(f.get_ref().as_ref())),
            access_log_format: access_log_format(&src, &p.access_log_format)?
                .unwrap_or(d.access_log_format),
            log: super::log::LogSettings::from_loaded(loaded)?,
            cert_expiry_warning: duration::parse_opt(&src, &p.cert_expiry_warning)?
                .unwrap_or(d.cert_expiry_warning),
            pid_file: p
                .pid_file
                .as_ref()
                .map(|f| loaded.resolve(f.get_ref().as_ref())),
            user,
            forwarded,
            redirect_listen,
            response_headers,
            path_rules,
            upgrade_protocols,
            certs,
            routes,
            upstreams,
        })
    }
}

/// `hsts` and `[proxy.response_headers]`, each name and value checked.
fn response_headers(src: &Source, p: &ProxyFile) -> Result<ResponseHeaders, ConfigError> {
    let name = |n: &str, span: std::ops::Range<usize>| {
        http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| src.error(span, format!("invalid header name {n:?}")))
    };
    let value = |v: &Spanned<String>| {
        http::HeaderValue::from_str(v.get_ref())
            .map_err(|_| src.error(v.span(), format!("invalid header value {:?}", v.get_ref())))
    };
    let mut out = ResponseHeaders::default();
    if let Some(h) = &p.hsts {
        out.set
            .push((http::header::STRICT_TRANSPORT_SECURITY, value(h)?));
    }
    let Some(rh) = &p.response_headers else {
        return Ok(out);
    };
    if let Some(remove) = &rh.remove {
        for n in remove.get_ref() {
            out.remove.push(name(n, remove.span())?);
        }
    }
    for (n, v) in &rh.set {
        out.set.push((name(n, v.span())?, value(v)?));
    }
    Ok(out)
}

/// `vaults` or `vault_sockets` (default: the `[vault]` socket) and
/// `vault_connections`, which the vault's per-uid limit bounds.
fn vault_client(
    loaded: &Loaded,
    src: &Source,
    p: &ProxyFile,
    vault: &super::vault::VaultSettings,
) -> Result<(Vec<crate::signer::Endpoint>, usize), ConfigError> {
    use crate::signer::Endpoint;
    let sockets = match (&p.vaults, &p.vault_sockets) {
        (Some(v), Some(_)) => {
            return Err(src.error(
                v.span(),
                "vaults and vault_sockets are both set; vault_sockets is the Unix-only spelling of vaults: keep one",
            ))
        }
        (Some(v), None) if v.get_ref().is_empty() => {
            return Err(src.error(v.span(), "vaults must name at least one vault"))
        }
        (Some(v), None) => {
            let mut out = Vec::with_capacity(v.get_ref().len());
            for item in v.get_ref() {
                let e = Endpoint::parse(item).ok_or_else(|| {
                    src.error(
                        v.span(),
                        format!("invalid vault endpoint {item:?}: expected \"unix:PATH\" or \"tls://HOST:PORT\""),
                    )
                })?;
                out.push(match e {
                    Endpoint::Unix(p) => Endpoint::Unix(loaded.resolve(&p)),
                    tls => tls,
                });
            }
            out
        }
        (None, Some(v)) if v.get_ref().is_empty() => {
            return Err(src.error(v.span(), "vault_sockets must name at least one socket"))
        }
        (None, Some(v)) => v
            .get_ref()
            .iter()
            .map(|s| Endpoint::Unix(loaded.resolve(s.as_ref())))
            .collect(),
        (None, None) => vec![Endpoint::Unix(vault.socket.clone())],
    };
    let default = ProxySettings::default().vault_connections as u32;
    let connections = positive(src, &p.vault_connections, default, "vault_connections")? as usize;
    let most = crate::protocol::MAX_CONNECTIONS_PER_UID;
    if connections > most {
        let span = p.vault_connections.as_ref().map_or(0..0, |v| v.span());
        return Err(src.error(
            span,
            format!(
                "vault_connections {connections} is more than the vault serves one caller ({most})"
            ),
        ));
    }
    Ok((sockets, connections))
}

impl ProxySettings {
    /// The client side of mutual TLS to the `tls://` vaults, read from
    /// `[proxy.vault_tls]`'s files.
    pub fn vault_client_tls(
        &self,
    ) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, crate::signer::endpoint::ClientTlsError>
    {
        self.vault_tls
            .as_ref()
            .map(|t| crate::signer::endpoint::client_config(&t.ca, &t.cert, &t.key))
            .transpose()
    }

    /// The Unix sockets among the vaults, in order.
    pub fn vault_unix_sockets(&self) -> Vec<PathBuf> {
        self.vaults
            .iter()
            .filter_map(|e| e.unix_path().map(PathBuf::from))
            .collect()
    }
}

/// `[proxy.vault_tls]`: needed by, and only by, `tls://` vaults.
fn vault_tls(
    loaded: &Loaded,
    src: &Source,
    p: &ProxyFile,
    vaults: &[crate::signer::Endpoint],
) -> Result<Option<VaultTls>, ConfigError> {
    let any_tls = vaults.iter().any(crate::signer::Endpoint::is_tls);
    match &p.vault_tls {
        None if any_tls => {
            let span = p.vaults.as_ref().map_or(0..0, Spanned::span);
            Err(src.error(
                span,
                "a tls:// vault needs [proxy.vault_tls] (ca, cert and key)",
            ))
        }
        None => Ok(None),
        Some(t) => Ok(Some(VaultTls {
            ca: loaded.resolve(t.ca.get_ref().as_ref()),
            cert: loaded.resolve(t.cert.get_ref().as_ref()),
            key: loaded.resolve(t.key.get_ref().as_ref()),
        })),
    }
}

/// The access log's line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `key=value` fields, client text quoted and escaped.
    Text,
    /// nginx's `combined`, then the request id and times.
    Combined,
    /// One JSON object per line.
    Json,
}

impl AccessLogFormat {
    pub fn name(self) -> &'static str {
        match self {
            AccessLogFormat::Text => "text",
            AccessLogFormat::Combined => "combined",
            AccessLogFormat::Json => "json",
        }
    }
}

fn access_log_format(
    src: &Source,
    v: &Option<Spanned<String>>,
) -> Result<Option<AccessLogFormat>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    [
        AccessLogFormat::Text,
        AccessLogFormat::Combined,
        AccessLogFormat::Json,
    ]
    .into_iter()
    .find(|f| f.name() == v.get_ref())
    .map(Some)
    .ok_or_else(|| {
        src.error(
            v.span(),
            format!(
                "invalid access_log_format {:?}: \"text\", \"combined\" or \"json\"",
                v.get_ref()
            ),
        )
    })
}

fn min_tls_version(
    src: &Source,
    v: &Option<Spanned<String>>,
) -> Result<Option<TlsVersion>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    match v.get_ref().as_str() {
        "1.2" => Ok(Some(TlsVersion::Tls12)),
        "1.3" => Ok(Some(TlsVersion::Tls13)),
        other => Err(src.error(
            v.span(),
            format!("invalid min_tls_version {other:?}: \"1.2\" or \"1.3\" (1.0 and 1.1 are never offered)"),
        )),
    }
}

fn limits(src: &Source, p: &ProxyFile, d: Limits) -> Result<Limits, ConfigError> {
    let max_connections = d.max_connections as u32;
    let max_header_size = d.max_header_size as u32;
    Ok(Limits {
        max_connections: positive(src, &p.max_connections, max_connections, "max_connections")?
            as usize,
        handshake_timeout: duration::parse_opt(src, &p.handshake_timeout)?
            .unwrap_or(d.handshake_timeout),
        header_timeout: duration::parse_opt(src, &p.header_timeout)?.unwrap_or(d.header_timeout),
        idle_timeout: duration::parse_opt(src, &p.idle_timeout)?.unwrap_or(d.idle_timeout),
        max_header_size: positive(src, &p.max_header_size, max_header_size, "max_header_size")?
            .max(8192) as usize,
        shutdown_timeout: duration::parse_opt(src, &p.shutdown_timeout)?
            .unwrap_or(d.shutdown_timeout),
    })
}

fn certs(loaded: &Loaded, src: &Source, p: &ProxyFile) -> Result<Vec<CertSpec>, ConfigError> {
    let certs = p
        .cert
        .iter()
        .map(|c| cert_spec(loaded, src, c))
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(src.file_error("[proxy] needs at least one [[proxy.cert]]"));
    }
    Ok(certs)
}

/// `default_server_name`, which must be one of the certificates' names.
fn default_server_name(
    src: &Source,
    p: &ProxyFile,
    certs: &[CertSpec],
) -> Result<Option<String>, ConfigError> {
    let Some(n) = &p.default_server_name else {
        return Ok(None);
    };
    let name = n.get_ref().to_ascii_lowercase();
    let known = certs.iter().any(|c| {
        c.names
            .iter()
            .any(|pat| HostPattern::parse(pat).is_ok_and(|p| p.matches(&name)))
    });
    if !known {
        return Err(src.error(
            n.span(),
            format!("default_server_name {name:?} matches no [[proxy.cert]] names"),
        ));
    }
    Ok(Some(name))
}

/// The upstreams, and the routes to them (each naming a defined one).
fn upstreams_and_routes(
    src: &Source,
    p: &ProxyFile,
    rules: PathRules,
) -> Result<(BTreeMap<String, UpstreamSpec>, Vec<RouteSpec>), ConfigError> {
    let mut upstreams = BTreeMap::new();
    for (name, u) in &p.upstream {
        upstreams.insert(name.clone(), upstream_spec(src, name, u)?);
    }
    let mut routes = Vec::new();
    for r in &p.route {
        let host = match &r.host {
            None => HostPattern::Any,
            Some(h) => HostPattern::parse(h.get_ref()).map_err(|e| src.error(h.span(), e))?,
        };
        let path_prefix = match &r.path {
            None => "/".to_owned(),
            Some(path) if !path.get_ref().starts_with('/') => {
                return Err(src.error(
                    path.span(),
                    format!("route path {:?} must start with '/'", path.get_ref()),
                ))
            }
            Some(path) => {
                route_prefix_can_match(path.get_ref(), rules)
                    .map_err(|e| src.error(path.span(), e))?;
                path.get_ref().clone()
            }
        };
        if !upstreams.contains_key(r.upstream.get_ref()) {
            return Err(src.error(
                r.upstream.span(),
                format!(
                    "unknown upstream {:?} (define [proxy.upstream.{}])",
                    r.upstream.get_ref(),
                    r.upstream.get_ref()
                ),
            ));
        }
        routes.push(RouteSpec {
            host,
            path_prefix,
            upstream: r.upstream.get_ref().clone(),
        });
    }
    if routes.is_empty() {
        return Err(src.file_error("[proxy] needs at least one [[proxy.route]]"));
    }
    Ok((upstreams, routes))
}

/// A prefix with a dot segment, or a doubled slash, could never match a
/// request path once it is normalised.
fn route_prefix_can_match(prefix: &str, rules: PathRules) -> Result<(), String> {
    let dotted = prefix.split('/').any(|s| s == "." || s == "..");
    if rules.normalize && dotted {
        return Err(format!(
            "route path {prefix:?} can never match: request paths have their dot segments resolved before routing (normalize_path)"
        ));
    }
    if rules.merge_slashes && prefix.contains("//") {
        return Err(format!(
            "route path {prefix:?} can never match: request paths have their slashes merged before routing (merge_slashes)"
        ));
    }
    Ok(())
}

/// `upgrade_protocols`: token names, lower-cased. `h2c` is refused: after
/// its `101` the client holds an HTTP/2 connection to the backend that no
/// route, host check or access log sees.
fn upgrade_protocols(
    src: &Source,
    v: &Option<Spanned<Vec<String>>>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(list) = v else { return Ok(None) };
    let mut out = Vec::new();
    for name in list.get_ref() {
        let lower = name.to_ascii_lowercase();
        let token = !lower.is_empty()
            && lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(src.error(
                list.span(),
                format!("invalid upgrade protocol {name:?} (a token, e.g. \"websocket\")"),
            ));
        }
        if lower == "h2c" {
            return Err(src.error(
                list.span(),
                "upgrade protocol \"h2c\" is never forwarded: the client would get an HTTP/2 connection to the backend past the routes (use an upstream with h2c = true)",
            ));
        }
        out.push(lower);
    }
    Ok(Some(out))
}

pub(super) fn listen_addrs(
    src: &Source,
    v: &Spanned<OneOrMany>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let items = v.get_ref().items();
    if items.is_empty() {
        return Err(src.error(v.span(), "listen must name at least one address"));
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for item in items {
        let addr: SocketAddr = item.parse().map_err(|e| {
            src.error(
                v.span(),
                format!("invalid listen address {item:?}: {e} (expected IP:PORT)"),
            )
        })?;
        if out.contains(&addr) {
            return Err(src.error(v.span(), format!("listen address {addr} given twice")));
        }
        out.push(addr);
    }
    Ok(out)
}

fn parse_addr(src: &Source, v: &Spanned<String>, what: &str) -> Result<SocketAddr, ConfigError> {
    v.get_ref().parse().map_err(|e| {
        src.error(
            v.span(),
            format!("invalid {what} {:?}: {e} (expected IP:PORT)", v.get_ref()),
        )
    })
}

fn positive(
    src: &Source,
    v: &Option<Spanned<u32>>,
    default: u32,
    what: &str,
) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if *n.get_ref() == 0 => {
            Err(src.error(n.span(), format!("{what} must be at least 1")))
        }
        Some(n) => Ok(*n.get_ref()),
    }
}

fn forwarded_headers(
    src: &Source,
    v: &Option<Spanned<Vec<String>>>,
) -> Result<ForwardedHeaders, ConfigError> {
    let Some(list) = v else {
        return Ok(ForwardedHeaders::default());
    };
    let mut f = ForwardedHeaders {
        x_forwarded_for: false,
        x_forwarded_proto: false,
        x_forwarded_host: false,
        forwarded: false,
        ..ForwardedHeaders::default()
    };
    for name in list.get_ref() {
        match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => f.x_forwarded_for = true,
            "x-forwarded-proto" => f.x_forwarded_proto = true,
            "x-forwarded-host" => f.x_forwarded_host = true,
            "forwarded" => f.forwarded = true,
            _ => {
                return Err(src.error(
                    list.span(),
                    format!("unknown forwarded header {name:?} (x-forwarded-for, x-forwarded-proto, x-forwarded-host, forwarded)"),
                ))
            }
        }
    }
    Ok(f)
}

fn client_ip_headers(
    src: &Source,
    v: &Option<Spanned<String>>,
) -> Result<Option<ClientIpHeaders>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    [
        ClientIpHeaders::Overwrite,
        ClientIpHeaders::Drop,
        ClientIpHeaders::Pass,
    ]
    .into_iter()
    .find(|c| c.name() == v.get_ref())
    .map(Some)
    .ok_or_else(|| {
        src.error(
            v.span(),
            format!(
                "invalid client_ip_headers {:?}: \"overwrite\", \"drop\" or \"pass\"",
                v.get_ref()
            ),
        )
    })
}

fn cert_spec(loaded: &Loaded, src: &Source, c: &CertFile) -> Result<CertSpec, ConfigError> {
    if c.names.get_ref().is_empty() {
        return Err(src.error(c.names.span(), "a certificate needs at least one name"));
    }
    for n in c.names.get_ref() {
        if HostPattern::parse(n).is_err() || n == "*" {
            return Err(src.error(c.names.span(), format!("invalid certificate name {n:?}")));
        }
    }
    let key = parse_key_ref(loaded, c.key.get_ref()).map_err(|e| src.error(c.key.span(), e))?;
    Ok(CertSpec {
        names: c
            .names
            .get_ref()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        cert: loaded.resolve(c.cert.get_ref().as_ref()),
        key,
        cert_at: src.location(c.cert.span().start),
        key_at: src.location(c.key.span().start),
    })
}

fn parse_key_ref(loaded: &Loaded, s: &str) -> Result<KeyRef, String> {
    if let Some(name) = s.strip_prefix("vault:") {
        if !name.is_empty() && name.chars().all(super::vault::is_name_char) {
            return Ok(KeyRef::Vault(name.to_owned()));
        }
        return Err(format!("invalid vault key name in {s:?}"));
    }
    if let Some(path) = s.strip_prefix("file:") {
        if !path.is_empty() {
            return Ok(KeyRef::File(loaded.resolve(path.as_ref())));
        }
    }
    Err(format!(
        "invalid key {s:?}: expected \"vault:NAME\" or \"file:PATH\""
    ))
}

fn upstream_spec(src: &Source, name: &str, u: &UpstreamFile) -> Result<UpstreamSpec, ConfigError> {
    if u.backends.get_ref().is_empty() {
        return Err(src.error(
            u.backends.span(),
            format!("upstream {name:?} needs at least one backend"),
        ));
    }
    let (mut fixed, mut named) = (Vec::new(), Vec::new());
    for b in u.backends.get_ref() {
        match parse_backend(b).map_err(|e| src.error(u.backends.span(), e))? {
            Backend::Addr(a) => fixed.push(a),
            Backend::Named(n) => named.push(n),
        }
    }
    let d = UpstreamSpec::default();
    let balance = match &u.balance {
        None => d.balance,
        Some(b) => match b.get_ref().as_str() {
            "round-robin" => Balance::RoundRobin,
            "least-conn" => Balance::LeastConn,
            "hash:client-ip" => Balance::HashClientIp,
            other => match other.strip_prefix("hash:header:") {
                Some(h) if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                    Balance::HashHeader(h.to_ascii_lowercase())
                }
                _ => {
                    return Err(src.error(
                        b.span(),
                        format!("invalid balance {other:?}: \"round-robin\", \"least-conn\", \"hash:client-ip\" or \"hash:header:NAME\""),
                    ))
                }
            },
        },
    };
    if u.h2c == Some(true) && u.proxy_protocol == Some(true) {
        return Err(src.error(
            u.backends.span(),
            format!("upstream {name:?}: h2c and proxy_protocol together are not supported"),
        ));
    }
    let hd = HealthSpec::default();
    let health = match &u.health {
        None => None,
        Some(h) => Some(HealthSpec {
            path: match &h.path {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(src.error(
                        p.span(),
                        format!("health path {:?} must start with '/'", p.get_ref()),
                    ))
                }
                Some(p) => p.get_ref().clone(),
                None => hd.path,
            },
            interval: duration::parse_opt(src, &h.interval)?.unwrap_or(hd.interval),
            timeout: duration::parse_opt(src, &h.timeout)?.unwrap_or(hd.timeout),
            healthy: positive(src, &h.healthy, hd.healthy, "healthy")?,
            unhealthy: positive(src, &h.unhealthy, hd.unhealthy, "unhealthy")?,
        }),
    };
    let mut spec = UpstreamSpec {
        name: name.to_owned(),
        backends: Vec::new(),
        fixed,
        named,
        resolve_every: duration::parse_opt(src, &u.resolve_every)?.unwrap_or(d.resolve_every),
        balance,
        connect_timeout: duration::parse_opt(src, &u.connect_timeout)?.unwrap_or(d.connect_timeout),
        response_timeout: duration::parse_opt(src, &u.response_timeout)?
            .unwrap_or(d.response_timeout),
        fail_timeout: duration::parse_opt(src, &u.fail_timeout)?.unwrap_or(d.fail_timeout),
        h2c: u.h2c.unwrap_or(d.h2c),
        proxy_protocol: u.proxy_protocol.unwrap_or(d.proxy_protocol),
        health,
    };
    // Resolved now, as nginx resolves at load: a name that does not
    // resolve fails the start (or the reload), named.
    spec.backends = spec
        .resolved_backends()
        .map_err(|e| src.error(u.backends.span(), e.to_string()))?;
    if spec.backends.is_empty() {
        return Err(src.error(
            u.backends.span(),
            format!("upstream {name:?}: its backends resolved to no address"),
        ));
    }
    Ok(spec)
}

/// A backend as written: an address, or a host name to resolve.
enum Backend {
    Addr(BackendSpec),
    Named(NamedBackend),
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    let mut parts = s.split_whitespace();
    let addr_text = parts.next().ok_or_else(|| "empty backend".to_owned())?;
    let target = match addr_text.parse::<SocketAddr>() {
        Ok(addr) => Ok(addr),
        Err(_) => match addr_text.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !host.contains(['[', ']', ':'])
                    && host.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    }) =>
            {
                let port = port.parse::<u16>().map_err(|_| {
                    format!("invalid backend port in {addr_text:?} (expected HOST:PORT)")
                })?;
                Err((host.to_ascii_lowercase(), port))
            }
            _ => {
                return Err(format!(
                    "invalid backend address {addr_text:?} (expected IP:PORT or HOST:PORT)"
                ))
            }
        },
    };
    let mut weight = 1;
    for opt in parts {
        match opt.strip_prefix("weight=").map(str::parse::<u32>) {
            Some(Ok(w)) if w > 0 => weight = w,
            _ => {
                return Err(format!(
                    "invalid backend option {opt:?} in {s:?} (only weight=N, N ≥ 1)"
                ))
            }
        }
    }
    Ok(match target {
        Ok(addr) => Backend::Addr(BackendSpec { addr, weight }),
        Err((host, port)) => Backend::Named(NamedBackend { host, port, weight }),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(text: &str) -> Result<ProxySettings, ConfigError> {
        let loaded = super::super::parse(Path::new("/etc/vg/p.toml"), text.to_owned())?;
        ProxySettings::from_loaded(&loaded)
    }

    const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:0"
[[proxy.cert]]
names = ["localhost", "*.example.com"]
cert = "c.pem"
key = "vault:default"
[[proxy.route]]
upstream = "web"
[proxy.upstream.web]
backends = ["127.0.0.1:8080", "127.0.0.1:8081 weight=3"]
balance = "hash:header:X-User"
"#;

    #[test]
    fn listen_lists_and_vault_connection_bounds() {
        let many = MINIMAL.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\nworkers = 1",
        );
        let s = settings(&many).unwrap();
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.workers, Some(1));
        let twice = MINIMAL.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = [\"127.0.0.1:1\", \"127.0.0.1:1\"]",
        );
        let e = settings(&twice).unwrap_err().to_string();
        assert!(e.contains("p.toml:3:") && e.contains("given twice"), "{e}");
        let too_many = MINIMAL.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nvault_connections = 300",
        );
        let e = settings(&too_many).unwrap_err().to_string();
        assert!(e.contains("p.toml:4:") && e.contains("256"), "{e}");
    }

    #[test]
    fn vaults_mix_kinds_and_are_not_vault_sockets_too() {
        let with = |keys: &str| {
            MINIMAL.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:0\"\n{keys}"),
            )
        };
        let tls = "[proxy.vault_tls]\nca = \"ca.pem\"\ncert = \"e.pem\"\nkey = \"e.key\"\n";
        let s = settings(&with(&format!(
            "vaults = [\"unix:run/v.sock\", \"tls://vault-a.internal:7700\"]\n{tls}"
        )))
        .unwrap();
        assert_eq!(
            s.vaults,
            vec![
                crate::signer::Endpoint::Unix(PathBuf::from("/etc/vg/run/v.sock")),
                crate::signer::Endpoint::Tls {
                    host: "vault-a.internal".into(),
                    port: 7700
                }
            ]
        );
        assert_eq!(s.vault_tls.unwrap().key, PathBuf::from("/etc/vg/e.key"));
        let both = settings(&with("vaults = [\"unix:/a\"]\nvault_sockets = [\"/a\"]")).unwrap_err();
        assert!(
            both.to_string().contains("p.toml:4:") && both.to_string().contains("both set"),
            "{both}"
        );
        let bad = settings(&with("vaults = [\"/run/v.sock\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("invalid vault endpoint \"/run/v.sock\""),
            "{bad}"
        );
        let no_tls = settings(&with("vaults = [\"tls://h:1\"]"))
            .unwrap_err()
            .to_string();
        assert!(no_tls.contains("needs [proxy.vault_tls]"), "{no_tls}");
    }

    #[test]
    fn minimal_section_validates_with_defaults() {
        let s = settings(MINIMAL).unwrap();
        assert_eq!(s.certs[0].key, KeyRef::Vault("default".into()));
        assert_eq!(s.certs[0].cert, PathBuf::from("/etc/vg/c.pem"));
        assert_eq!(
            s.vaults,
            vec![crate::signer::Endpoint::Unix(PathBuf::from(
                super::super::vault::DEFAULT_SOCKET
            ))]
        );
        assert_eq!(s.sign_timeout, Duration::from_millis(100));
        assert_eq!(s.min_tls_version, TlsVersion::Tls12);
        let web = &s.upstreams["web"];
        assert_eq!(web.backends[1].weight, 3);
        assert_eq!(web.balance, Balance::HashHeader("x-user".into()));
        assert_eq!(s.routes[0].host, HostPattern::Any);
        assert!(s.forwarded.forwarded && s.forwarded.x_forwarded_for);
    }

    #[test]
    fn errors_point_at_the_value() {
        let bad = MINIMAL.replace("vault:default", "vault:");
        let e = settings(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/vg/p.toml:7:7: invalid vault key name"),
            "{e}"
        );
        let bad = MINIMAL.replace("upstream = \"web\"", "upstream = \"api\"");
        let e = settings(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/vg/p.toml:9:12: unknown upstream \"api\""),
            "{e}"
        );
        let bad = MINIMAL.replace("weight=3", "weight=0");
        let e = settings(&bad).unwrap_err().to_string();
        assert!(e.contains("p.toml:11:12: invalid backend option"), "{e}");
        let bad = MINIMAL.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"localhost\"\nmin_tls_version = \"1.1\"",
        );
        let e = settings(&bad).unwrap_err().to_string();
        assert!(e.starts_with("/etc/vg/p.toml:3:10: invalid listen"), "{e}");
        let bad = MINIMAL.replace("listen = \"127.0.0.1:0\"", "min_tls_version = \"1.1\"");
        let e = settings(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/vg/p.toml:3:19: invalid min_tls_version"),
            "{e}"
        );
        let e = settings("[proxy]\nlisten = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/vg/p.toml:2:10:"), "{e}");
    }

    #[test]
    fn h2c_is_never_an_upgrade_protocol_and_prefixes_must_be_reachable() {
        let s = settings(MINIMAL).unwrap();
        assert_eq!(s.upgrade_protocols, ["websocket"]);
        assert_eq!(s.path_rules, PathRules::default());
        let h2c = MINIMAL.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nupgrade_protocols = [\"WebSocket\", \"H2C\"]",
        );
        let e = settings(&h2c).unwrap_err().to_string();
        assert!(
            e.contains("p.toml:4:") && e.contains("\"h2c\" is never"),
            "{e}"
        );
        let dots = MINIMAL.replace(
            "upstream = \"web\"",
            "path = \"/a/../b\"\nupstream = \"web\"",
        );
        let e = settings(&dots).unwrap_err().to_string();
        assert!(e.contains("can never match"), "{e}");
        let off = dots.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nnormalize_path = false",
        );
        assert!(!settings(&off).unwrap().path_rules.normalize);
    }

    #[test]
    fn host_patterns_match_like_nginx_server_names() {
        let w = HostPattern::parse("*.Example.com").unwrap();
        assert!(w.matches("a.example.com") && w.matches("a.b.example.com"));
        assert!(!w.matches("example.com") && !w.matches("aexample.com"));
        assert!(HostPattern::parse("a b").is_err());
    }
}
