//! Real HTTP backends for the proxy tests: nginx and Apache on loopback
//! ports, each in its own temp dir, waited on until they answer, killed
//! on drop. Plus tiny in-test servers for behaviour no stock server
//! has: one that accepts and never answers (504), a WebSocket echo, and
//! one that hands the test each request head it gets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{require_tool, wait_for};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A loopback port that was free a moment ago (servers that cannot bind
/// port 0 and report it need one chosen for them).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir");
    // Apache's and nginx's workers run as another user when we are root.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn wait_listening(what: &str, child: &mut Child, addr: SocketAddr, log: &Path) {
    wait_for(what, Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    });
}

/// A real nginx serving `www/` (static files, PUT under `/upload/`) plus
/// `/whoami` (its name) and `/headers` (the request headers a proxy sets).
pub struct Nginx {
    pub name: String,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nginx {
    pub fn start(name: &str) -> Nginx {
        Nginx::start_with(name, "")
    }

    /// `listen_opts` are added to the `listen` line: " proxy_protocol" (the
    /// listener expects a PROXY header first and `/headers` reports the
    /// address it carried as `pp=`) or " http2" (h2c, prior knowledge).
    pub fn start_with(name: &str, listen_opts: &str) -> Nginx {
        Nginx::start_at(
            name,
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            listen_opts,
        )
    }

    /// On `addr` (another loopback address, say, for a second "host").
    pub fn start_at(name: &str, addr: SocketAddr, listen_opts: &str) -> Nginx {
        let dir = temp_dir("vg-nginx-");
        for sub in ["www/upload", "tmp", "logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        std::fs::set_permissions(
            dir.path().join("www/upload"),
            std::fs::Permissions::from_mode(0o777),
        )
        .expect("chmod upload");
        let d = dir.path().display();
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
worker_processes 1;
error_log {d}/logs/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  client_max_body_size 0;
  default_type application/octet-stream;
  keepalive_requests 100000;
  server {{
    listen {addr}{listen_opts};
    root {d}/www;
    location = /whoami {{ return 200 "{name}\n"; }}
    location = /healthz {{ return 200 "ok\n"; }}
    location = /headers {{
      return 200 "host=$http_host\nxff=$http_x_forwarded_for\nxfp=$http_x_forwarded_proto\nxfh=$http_x_forwarded_host\nforwarded=$http_forwarded\nconnection=$http_connection\nkeep-alive=$http_keep_alive\nproxy-connection=$http_proxy_connection\nx-hop=$http_x_hop\npp=$proxy_protocol_addr\nprotocol=$server_protocol\n";
    }}
    location /upload/ {{ dav_methods PUT; create_full_put_path on; }}
  }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let mut n = Nginx {
            name: name.to_owned(),
            addr,
            dir,
            child: None,
        };
        n.restart();
        n
    }

    /// Starts (again) on the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(run_nginx(self.dir.path(), self.addr));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// The nginx process (one, as `master_process off` runs it), if running.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs nginx on `dir/nginx.conf` in the foreground, once `addr` answers.
fn run_nginx(d: &Path, addr: SocketAddr) -> Child {
    let nginx = require_tool("nginx", "nginx");
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(d)
        .arg("-e")
        .arg(d.join("logs/error.log"))
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .args(["-g", "daemon off; master_process off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    wait_listening("nginx", &mut child, addr, &d.join("logs/error.log"));
    child
}

/// nginx as a reverse proxy, for comparing with vaultgate in front of the
/// same backend: one `location PREFIX { proxy_pass http://BACKEND; }` and
/// nothing else (any other path is a 404 from its empty root), on a
/// plain HTTP/1.1 port and an h2c (prior knowledge) port.
pub struct NginxProxy {
    pub addr: SocketAddr,
    pub h2c_addr: SocketAddr,
    _dir: tempfile::TempDir,
    child: Child,
}

impl NginxProxy {
    pub fn start(prefix: &str, backend: SocketAddr) -> NginxProxy {
        let dir = temp_dir("vg-nginx-proxy-");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let h2c_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        for sub in ["www", "tmp", "logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let d = dir.path().display();
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
worker_processes 1;
error_log {d}/logs/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    listen {addr};
    listen {h2c_addr} http2;
    root {d}/www;
    location {prefix} {{ proxy_pass http://{backend}; }}
  }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let child = run_nginx(dir.path(), addr);
        NginxProxy {
            addr,
            h2c_addr,
            _dir: dir,
            child,
        }
    }
}

impl Drop for NginxProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Apache (prefork, `-X`) serving `www/` and two CGI scripts:
/// `/cgi/echo` (answers with the request body) and `/cgi/headers`.
pub struct Apache {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Apache {
    pub fn start() -> Apache {
        Apache::start_with(false)
    }

    /// With `h2c`, the event MPM and mod_http2 with `Protocols h2c
    /// http/1.1`: the backend accepts an HTTP/1.1 `Upgrade: h2c`.
    pub fn start_with(h2c: bool) -> Apache {
        let httpd = require_tool("apache2", "apache2");
        let dir = temp_dir("vg-apache-");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        for sub in ["www", "cgi", "logs", "run"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let scripts = [
            (
                "echo",
                // mod_cgi writes the whole body before reading the answer:
                // spool it, or both pipes fill and deadlock.
                "#!/bin/sh\nt=$(mktemp)\nhead -c \"${CONTENT_LENGTH:-0}\" > \"$t\"\nprintf 'Content-Type: application/octet-stream\\r\\n\\r\\n'\ncat \"$t\"\nrm -f \"$t\"\n",
            ),
            (
                "headers",
                "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"host=$HTTP_HOST\"\necho \"xff=$HTTP_X_FORWARDED_FOR\"\necho \"xfp=$HTTP_X_FORWARDED_PROTO\"\necho \"forwarded=$HTTP_FORWARDED\"\n",
            ),
        ];
        for (name, text) in scripts {
            let p = dir.path().join("cgi").join(name);
            std::fs::write(&p, text).expect("write cgi");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .expect("chmod cgi");
        }
        let m = "/usr/lib/apache2/modules";
        let d = dir.path().display();
        let user = if is_root() {
            "User www-data\nGroup www-data"
        } else {
            ""
        };
        // mod_http2 does nothing under prefork.
        let mpm = if h2c {
            format!("LoadModule mpm_event_module {m}/mod_mpm_event.so\nLoadModule http2_module {m}/mod_http2.so\nProtocols h2c http/1.1")
        } else {
            format!("LoadModule mpm_prefork_module {m}/mod_mpm_prefork.so")
        };
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName localhost
Listen {addr}
PidFile {d}/run/httpd.pid
DefaultRuntimeDir {d}/run
ErrorLog {d}/logs/error.log
LogLevel warn
{mpm}
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule alias_module {m}/mod_alias.so
LoadModule cgi_module {m}/mod_cgi.so
{user}
KeepAlive On
DocumentRoot "{d}/www"
<Directory "{d}/www">
  Require all granted
</Directory>
ScriptAlias /cgi/ "{d}/cgi/"
<Directory "{d}/cgi">
  Options +ExecCGI
  Require all granted
</Directory>
"#
        );
        std::fs::write(dir.path().join("httpd.conf"), conf).expect("write httpd.conf");
        let mut child = Command::new(httpd)
            .arg("-f")
            .arg(dir.path().join("httpd.conf"))
            .args(["-X", "-DFOREGROUND"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn apache2");
        wait_listening(
            "apache2",
            &mut child,
            addr,
            &dir.path().join("logs/error.log"),
        );
        Apache {
            addr,
            dir,
            child: Some(child),
        }
    }

    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Accepts connections, reads, and never answers: an upstream that hangs.
pub struct Silent {
    pub addr: SocketAddr,
}

impl Silent {
    pub fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().map_while(Result::ok) {
                held.push(s);
            }
        });
        Silent { addr }
    }
}

/// A minimal RFC 6455 echo server (text and binary frames, unfragmented)
/// for the WebSocket pass-through test; neither nginx nor Apache echo.
pub struct WsEcho {
    pub addr: SocketAddr,
}

impl WsEcho {
    pub fn start() -> WsEcho {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                std::thread::spawn(move || ws_serve(s));
            }
        });
        WsEcho { addr }
    }
}

pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub fn ws_accept_key(key: &str) -> String {
    use base64::Engine;
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

fn ws_serve(s: TcpStream) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let mut key = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(v.trim().to_owned());
            }
        }
    }
    let Some(key) = key else { return };
    let _ = write!(
        w,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws_accept_key(&key)
    );
    loop {
        let mut h = [0u8; 2];
        if r.read_exact(&mut h).is_err() {
            return;
        }
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            let _ = r.read_exact(&mut b);
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            let _ = r.read_exact(&mut b);
            len = u64::from_be_bytes(b);
        }
        let mut mask = [0u8; 4];
        if masked {
            let _ = r.read_exact(&mut mask);
        }
        let mut payload = vec![0u8; len as usize];
        if r.read_exact(&mut payload).is_err() {
            return;
        }
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        if opcode == 8 {
            let _ = w.write_all(&[0x88, 0]);
            return;
        }
        // Server frames are unmasked.
        let mut out = vec![0x80 | opcode];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&payload);
        if w.write_all(&out).is_err() {
            return;
        }
    }
}

/// A backend that answers `200 ok` to every request (GETs: no request
/// body) and hands each request head it read to the test, for what the
/// proxy forwards that nginx would not show.
pub struct Recorder {
    pub addr: SocketAddr,
    pub heads: std::sync::mpsc::Receiver<String>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, heads) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().expect("clone");
                    let mut r = BufReader::new(s);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            match r.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let _ = tx.send(head);
                        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Recorder { addr, heads }
    }

    /// The next request head (waits up to 30 s).
    pub fn next_head(&self) -> String {
        self.heads
            .recv_timeout(Duration::from_secs(30))
            .expect("a request at the backend")
    }
}
