//! A small blocking client for the vault socket, and the connections a
//! process keeps.
//!
//! No thread and no runtime: the calling thread writes its requests (all
//! at once, pipelined) and reads until each is answered. Connections are
//! taken from a per-process pool for one exchange and put back, so
//! threads that sign at once (Apache's event MPM) each use their own, and
//! a single-threaded nginx worker holds exactly one. Connections made
//! before a fork are never used after it (see `fork`): the child closes
//! its copies (which leaves the parent's open) and connects anew, so the
//! vault sees the child's uid.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::BytesMut;
use vaultgate::protocol::{frame, Request, Response, OP_EVENT};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fork;
use vaultgate::sync::Locked;

/// Idle connections kept per process; more threads than this at once
/// still work, their extra connections are closed after use.
const MAX_IDLE: usize = 8;

pub struct Pool {
    generation: u64,
    socket: Option<PathBuf>,
    idle: Vec<Conn>,
}

pub static POOL: Mutex<Pool> = Mutex::new(Pool {
    generation: 0,
    socket: None,
    idle: Vec::new(),
});

struct Conn {
    stream: UnixStream,
    next_id: u32,
    buf: BytesMut,
}

/// Sends `requests` on one connection and returns their answers in the
/// same order. Error answers are returned as answers; the `Err` cases are
/// a vault that cannot be reached or does not speak the protocol.
pub fn exchange(config: &Config, requests: &[Request]) -> Result<Vec<Response>> {
    let path = &config.socket;
    let (mut conn, reused) = match take(path) {
        Some(c) => (c, true),
        None => (connect(config)?, false),
    };
    let answers = match conn.exchange(path, requests) {
        // An idle connection may have been closed by a vault that
        // restarted: one more try on a fresh one. Signing twice is
        // harmless; a second failure is the vault's state.
        Err(e) if reused && went_away(&e) => {
            conn = connect(config)?;
            conn.exchange(path, requests)?
        }
        other => other?,
    };
    put_back(path, conn);
    Ok(answers)
}

/// The peer closed or reset the connection. A timeout is not that: the
/// vault is there but slow, and a worker must not wait twice as long.
fn went_away(e: &Error) -> bool {
    match e {
        Error::Closed { .. } => true,
        Error::Io { source, .. } => {
            !matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
        }
        _ => false,
    }
}

/// Closes this process's idle connections (`C_Finalize`). Nothing is
/// sent: closing a descriptor the parent or siblings share leaves the
/// connection open for them.
pub fn close_all() {
    let mut pool = POOL.locked();
    pool.idle.clear();
    pool.socket = None;
}

fn take(path: &Path) -> Option<Conn> {
    let mut pool = POOL.locked();
    let generation = fork::generation();
    if pool.generation != generation || pool.socket.as_deref() != Some(path) {
        // Inherited from before a fork, or for another socket: closed,
        // never written to.
        pool.idle.clear();
        pool.generation = generation;
        pool.socket = Some(path.to_owned());
    }
    pool.idle.pop()
}

fn put_back(path: &Path, conn: Conn) {
    let mut pool = POOL.locked();
    if pool.generation == fork::generation()
        && pool.socket.as_deref() == Some(path)
        && pool.idle.len() < MAX_IDLE
    {
        pool.idle.push(conn);
    }
}

fn connect(config: &Config) -> Result<Conn> {
    let path = &config.socket;
    let connect_err = |source| Error::Connect {
        path: path.clone(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(connect_err)?;
    stream
        .set_read_timeout(Some(config.timeout))
        .and_then(|()| stream.set_write_timeout(Some(config.timeout)))
        .map_err(connect_err)?;
    Ok(Conn {
        stream,
        next_id: 1,
        buf: BytesMut::with_capacity(4096),
    })
}

impl Conn {
    fn exchange(&mut self, path: &Path, requests: &[Request]) -> Result<Vec<Response>> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut out = BytesMut::new();
        let mut waiting = HashMap::with_capacity(requests.len());
        for (i, req) in requests.iter().enumerate() {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            req.to_frame(id)
                .encode(&mut out)
                .map_err(|source| Error::Protocol {
                    path: path.to_owned(),
                    source,
                })?;
            waiting.insert(id, i);
        }
        send_all(&self.stream, &out).map_err(io)?;
        let mut answers: Vec<Option<Response>> = vec![None; requests.len()];
        let mut left = requests.len();
        while left > 0 {
            let frame = loop {
                match frame::decode(&mut self.buf) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {}
                    Err(source) => {
                        return Err(Error::Protocol {
                            path: path.to_owned(),
                            source,
                        })
                    }
                }
                self.buf.reserve(4096);
                let n = read_some(&mut self.stream, &mut self.buf).map_err(io)?;
                if n == 0 {
                    return Err(Error::Closed {
                        path: path.to_owned(),
                    });
                }
            };
            if frame.opcode == OP_EVENT {
                continue;
            }
            let Some(i) = waiting.remove(&frame.request_id) else {
                return Err(Error::UnknownAnswer {
                    path: path.to_owned(),
                    id: frame.request_id,
                });
            };
            let resp = Response::from_frame(requests[i].op(), &frame).map_err(|source| {
                Error::Protocol {
                    path: path.to_owned(),
                    source,
                }
            })?;
            answers[i] = Some(resp);
            left -= 1;
        }
        Ok(answers.into_iter().flatten().collect())
    }
}

/// Writes all of `buf` with `MSG_NOSIGNAL`: a plain `write` on a
/// connection the vault has closed raises SIGPIPE, which kills a host
/// that did not ignore it (the openssl command, a script). Retries on
/// EINTR; the socket's write timeout still applies.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        match send(stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One `read` into the spare capacity of `buf`; retries on EINTR (a web
/// server's signals arrive while its worker waits for a signature).
fn read_some(stream: &mut UnixStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let start = buf.len();
    buf.resize(buf.capacity(), 0);
    loop {
        match stream.read(&mut buf[start..]) {
            Ok(n) => {
                buf.truncate(start + n);
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
}
