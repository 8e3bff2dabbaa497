//! A fault-injecting HTTP proxy on 127.0.0.1 between a client under test and a real registry:
//! it answers chosen requests with a status, cuts request or response bodies, delays responses,
//! or stalls a response part-way until the test releases it, and records every request it saw.
//! It speaks just enough HTTP/1.1 to find request boundaries; it must never listen beyond
//! loopback, and it stops on drop (or by itself after [`PROXY_LIFETIME`]).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a proxy serves at most when a test forgets to drop it: long enough for a slow test
/// on a loaded machine, short enough that a leaked proxy goes away.
pub const PROXY_LIFETIME: Duration = Duration::from_secs(600);

/// How long a socket read may block: generous, so load never passes for a fault.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stalled response waits for [`Gate::release`] before the proxy gives up and closes
/// the connection (so a test that fails before releasing cannot leave a thread behind forever).
const STALL_LIMIT: Duration = Duration::from_secs(300);

/// What the proxy does to requests matching a rule.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and body instead of forwarding.
    Status(u16, &'static str),
    /// Forward only this many bytes of the request body, then close both connections.
    CutRequest(usize),
    /// Forward only this many bytes of the response body, then close.
    CutResponse(usize),
    /// Wait this long before forwarding the response.
    Delay(Duration),
    /// Forward the whole response, with the body's byte at this offset inverted: a registry
    /// (or a network) serving other bytes than the digest names, at the right length.
    Flip(usize),
    /// Forward this many bytes of the response body, open `gate` as reached, and send the rest
    /// only once the test releases it: a download that is provably under way and unfinished.
    Stall(usize, Gate),
    /// Answer with this status and a body of `chunk` repeated without end (no `Content-Length`),
    /// until the client stops reading (or [`ENDLESS_LIMIT`] bytes, so a client that never stops
    /// cannot keep the proxy busy forever): a hostile registry's answer.
    Endless(u16, &'static str),
}

/// The most an [`Fault::Endless`] body sends before the proxy gives up on the client.
pub const ENDLESS_LIMIT: u64 = 4 << 30;

/// One rule: which requests get which fault, how many times.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    /// A substring of the request path (query included).
    pub path: String,
    pub fault: Fault,
    /// How many matching requests get the fault; later ones pass through.
    pub times: usize,
}

pub fn rule(method: &'static str, path: impl Into<String>, fault: Fault, times: usize) -> Rule {
    Rule {
        method,
        path: path.into(),
        fault,
        times,
    }
}

/// One request seen by the proxy and the status it answered (0 when cut).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Debug, Default)]
struct GateState {
    reached: bool,
    released: bool,
}

/// The meeting point of a stalled response and the test: the proxy says when it has sent the
/// first part, the test says when the rest may go. Waits on both sides are events, not sleeps.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<GateState>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Waits until the proxy has sent the first part of the stalled response; `false` when that
    /// did not happen within `timeout`.
    pub fn wait_reached(&self, timeout: Duration) -> bool {
        let (lock, cvar) = &*self.0;
        let state = lock.lock().expect("gate lock");
        let (state, _) = cvar
            .wait_timeout_while(state, timeout, |s| !s.reached)
            .expect("gate lock");
        state.reached
    }

    /// Lets the stalled response go on (and any later one through this gate).
    pub fn release(&self) {
        let (lock, cvar) = &*self.0;
        lock.lock().expect("gate lock").released = true;
        cvar.notify_all();
    }

    /// The proxy's side: announce the stall, then wait for the release; `false` on timeout.
    fn stall(&self, limit: Duration) -> bool {
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().expect("gate lock");
        state.reached = true;
        cvar.notify_all();
        let (state, _) = cvar
            .wait_timeout_while(state, limit, |s| !s.released)
            .expect("gate lock");
        state.released
    }
}

/// A TCP proxy on 127.0.0.1: every request is forwarded with `Connection: close`, so a response
/// ends when upstream closes.
pub struct FaultProxy {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on loopback");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rules = Arc::new(Mutex::new(rules));
        let (seen2, stop2, rules2, upstream) = (
            seen.clone(),
            stop.clone(),
            rules.clone(),
            upstream.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + PROXY_LIFETIME;
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (seen, rules, upstream) =
                            (seen2.clone(), rules2.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = handle(client, &upstream, &rules, &seen);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            addr,
            seen,
            rules,
            stop,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// How many `method` requests whose path contains `path` the proxy saw.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Stalled responses end with the proxy.
        if let Ok(rules) = self.rules.lock() {
            for r in rules.iter() {
                if let Fault::Stall(_, gate) = &r.fault {
                    gate.release();
                }
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_head(s: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        let n = s.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    }
}

/// The parts of a request head the proxy needs.
struct Request {
    line: String,
    method: String,
    path: String,
    length: usize,
    /// The body comes in chunks (`Transfer-Encoding: chunked`), not `length` bytes.
    chunked: bool,
    /// Every header but `Connection`.
    headers: Vec<String>,
}

fn parse_request(head: &[u8]) -> Request {
    let text = String::from_utf8_lossy(head).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_string();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    let mut chunked = false;
    let mut headers = Vec::new();
    for h in lines.filter(|l| !l.is_empty()) {
        let (name, value) = h.split_once(':').unwrap_or((h, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
        if !name.eq_ignore_ascii_case("connection") {
            headers.push(h.to_string());
        }
    }
    Request {
        line,
        method,
        path,
        length,
        chunked,
        headers,
    }
}

fn handle(
    mut client: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<Rule>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    let (head, body_start) = read_head(&mut client)?;
    let req = parse_request(&head);
    let fault = {
        let mut rules = rules.lock().expect("rules lock");
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == req.method && req.path.contains(&r.path))
            .map(|r| {
                r.times -= 1;
                r.fault.clone()
            })
    };
    let record = |status: u16| {
        seen.lock().expect("seen lock").push(Seen {
            method: req.method.clone(),
            path: req.path.clone(),
            status,
        })
    };

    if let Some(Fault::Status(code, body)) = fault {
        // Drain the request body so the client sees the answer rather than a reset.
        if req.chunked {
            forward_chunked_body(&mut client, None, body_start.clone())?;
        }
        let mut remaining = req.length.saturating_sub(body_start.len());
        let mut sink = [0u8; 65536];
        while remaining > 0 {
            let n = client.read(&mut sink[..remaining.min(65536)])?;
            if n == 0 {
                break;
            }
            remaining -= n;
        }
        record(code);
        let content_type = if body.starts_with('{') {
            "application/json"
        } else {
            "text/plain"
        };
        write!(
            client,
            "HTTP/1.1 {code} Injected\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }

    if let Some(Fault::Endless(code, chunk)) = fault {
        record(code);
        write!(
            client,
            "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        )?;
        let block = chunk.repeat((65536 / chunk.len().max(1)).max(1));
        let mut sent = 0u64;
        // Ends with an error once the client closes the connection.
        while sent < ENDLESS_LIMIT {
            client.write_all(block.as_bytes())?;
            sent += block.len() as u64;
        }
        return Ok(());
    }

    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut out = format!("{}\r\n", req.line);
    for h in &req.headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    server.write_all(out.as_bytes())?;
    let limit = match fault {
        Some(Fault::CutRequest(n)) => n,
        _ => usize::MAX,
    };
    if req.chunked {
        assert_eq!(
            limit,
            usize::MAX,
            "CutRequest of a chunked request is not supported"
        );
        forward_chunked_body(&mut client, Some(&mut server), body_start)?;
    } else if !forward_request_body(&mut client, &mut server, body_start, req.length, limit)? {
        record(0);
        let _ = server.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }

    if let Some(Fault::Delay(d)) = &fault {
        std::thread::sleep(*d);
    }
    let (resp_head, resp_body) = read_head(&mut server)?;
    let status: u16 = String::from_utf8_lossy(&resp_head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let cut = match fault {
        Some(Fault::CutResponse(n)) => Some(n),
        _ => None,
    };
    record(if cut.is_some() { 0 } else { status });
    client.write_all(&resp_head)?;
    let flip = match fault {
        Some(Fault::Flip(at)) => Some(at),
        _ => None,
    };
    let stall = match fault {
        Some(Fault::Stall(after, gate)) => Some((after, gate)),
        _ => None,
    };
    forward_response_body(&mut server, &mut client, resp_body, cut, stall, flip)
}

/// Forwards a request body of `length` bytes (`pending`: what came with the head), at most
/// `limit` of them; `false` when it stopped at the limit (the request is to be cut).
fn forward_request_body(
    client: &mut TcpStream,
    server: &mut TcpStream,
    mut pending: Vec<u8>,
    length: usize,
    limit: usize,
) -> std::io::Result<bool> {
    let mut sent = 0usize;
    let mut remaining = length;
    let mut buf = vec![0u8; 65536];
    loop {
        if !pending.is_empty() {
            let take = pending.len().min(remaining);
            let chunk: Vec<u8> = pending.drain(..).take(take).collect();
            let allowed = chunk.len().min(limit - sent);
            server.write_all(&chunk[..allowed])?;
            sent += allowed;
            remaining -= chunk.len();
        }
        if sent >= limit && limit != usize::MAX {
            return Ok(false);
        }
        if remaining == 0 {
            return Ok(true);
        }
        let n = client.read(&mut buf[..remaining.min(65536)])?;
        if n == 0 {
            return Ok(true);
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Forwards a chunked request body as it comes (`pending`: what came with the head), framing
/// included, up to its last chunk and trailer; only drains it when `server` is `None`.
fn forward_chunked_body(
    client: &mut TcpStream,
    mut server: Option<&mut TcpStream>,
    pending: Vec<u8>,
) -> std::io::Result<()> {
    let mut buf = pending;
    let mut pos = 0usize;
    let mut more = |buf: &mut Vec<u8>, pos: &mut usize| -> std::io::Result<()> {
        buf.drain(..*pos);
        *pos = 0;
        let mut chunk = [0u8; 65536];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    let mut send = |bytes: &[u8]| match server.as_mut() {
        Some(server) => server.write_all(bytes),
        None => Ok(()),
    };
    // One line (with its CRLF) at `pos`.
    let line = |buf: &mut Vec<u8>,
                pos: &mut usize,
                more: &mut dyn FnMut(&mut Vec<u8>, &mut usize) -> std::io::Result<()>|
     -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(end) = buf[*pos..].windows(2).position(|w| w == b"\r\n") {
                let l = buf[*pos..*pos + end + 2].to_vec();
                *pos += end + 2;
                return Ok(l);
            }
            more(buf, pos)?;
        }
    };
    loop {
        let size_line = line(&mut buf, &mut pos, &mut more)?;
        send(&size_line)?;
        let text = String::from_utf8_lossy(&size_line);
        let hex = text.trim_end().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            loop {
                let trailer = line(&mut buf, &mut pos, &mut more)?;
                send(&trailer)?;
                if trailer == b"\r\n" {
                    return Ok(());
                }
            }
        }
        let mut left = size + 2; // the data and its CRLF
        while left > 0 {
            if pos == buf.len() {
                more(&mut buf, &mut pos)?;
            }
            let take = left.min(buf.len() - pos);
            send(&buf[pos..pos + take])?;
            pos += take;
            left -= take;
        }
    }
}

/// Forwards the response body until upstream closes: only `cut` bytes of it when set, with
/// `stall`, the first bytes, then (after the gate's release) the rest, and with `flip`, all of
/// it with the byte at that offset inverted.
fn forward_response_body(
    server: &mut TcpStream,
    client: &mut TcpStream,
    mut pending: Vec<u8>,
    cut: Option<usize>,
    mut stall: Option<(usize, Gate)>,
    flip: Option<usize>,
) -> std::io::Result<()> {
    let mut forwarded = 0usize;
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(n) = cut {
            let allowed = pending.len().min(n - forwarded);
            client.write_all(&pending[..allowed])?;
            forwarded += allowed;
            if forwarded >= n {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
        } else if let Some((after, gate)) = stall.take() {
            let allowed = pending.len().min(after - forwarded);
            client.write_all(&pending[..allowed])?;
            forwarded += allowed;
            if forwarded >= after {
                client.flush()?;
                if !gate.stall(STALL_LIMIT) {
                    let _ = client.shutdown(Shutdown::Both);
                    return Ok(());
                }
                client.write_all(&pending[allowed..])?;
            } else {
                stall = Some((after, gate));
            }
        } else {
            if let Some(at) = flip.and_then(|at| at.checked_sub(forwarded)) {
                if let Some(byte) = pending.get_mut(at) {
                    *byte ^= 0xff;
                }
            }
            client.write_all(&pending)?;
            forwarded += pending.len();
        }
        pending.clear();
        let n = server.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}
