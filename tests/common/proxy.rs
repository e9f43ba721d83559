//! A fault-injecting HTTP/1.1 proxy between alitx and the S3 server, for
//! tests that must show what alitx does when the network misbehaves.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every request to
//! the S3 endpoint of the tests (`AWS_ENDPOINT_URL`, plain `http://`); point
//! alitx at it with `--endpoint-url` [`Proxy::url`]. Requests are forwarded
//! byte for byte, `Host` included: SigV4 signs the host alitx talked to
//! (the proxy's), and the server checks the signature against the `Host`
//! header it receives, so signatures stay valid. Each client connection is
//! served in turn, keep-alive included (the SDK pools connections); every
//! forwarded request goes over a fresh connection to the server, so no stale
//! server-side connection can fail a request the proxy meant to pass.
//!
//! What it does to a request ([`Fault`]):
//! - chosen at random, per request, with the probabilities of [`Faults`]:
//!   answer `503 SlowDown` without forwarding; forward half the body and
//!   reset both connections; carry a PUT, POST or DELETE out and reset the
//!   client's connection instead of answering. The draw is a hash of the
//!   seed, the request (method, key without the bucket, query without the
//!   upload id) and how often that request was seen, so one seed replays the
//!   same faults whatever order concurrent requests arrive in;
//! - chosen by [`Rule`]s: the Nth request matching a [`Match`] (or every
//!   one), to reproduce one fault deterministically, including
//!   [`Fault::Stall`] (hold both connections after K body bytes) and
//!   [`Fault::NeverAnswer`] for timeout tests.
//!
//! [`Proxy::counts`] tells how many requests it saw and which faults it
//! injected; [`Proxy::events`] lists each injected fault. Anything the proxy
//! itself failed to do (the server unreachable, a reply it cannot parse) is
//! counted in [`Counts::proxy_errors`], so that a test can tell a proxy
//! problem from an alitx one. `ALITX_PROXY_LOG=1` logs every request on
//! stderr.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to one request instead of forwarding it faithfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 SlowDown` with S3's XML error body, forwarding nothing.
    SlowDown,
    /// Forward the head and half the body (half the head if there is no
    /// body), then reset both connections: the server never gets the whole
    /// request.
    CutBody,
    /// Forward the whole request and read the server's whole answer, then
    /// reset the client's connection without answering: the server carried
    /// the request out, the client cannot know.
    LoseAnswer,
    /// Forward the head and the first `after_body_bytes` bytes of the body,
    /// then hold both connections open, forwarding and answering nothing.
    Stall { after_body_bytes: u64 },
    /// Read the request (and whatever follows), forward nothing, never
    /// answer.
    NeverAnswer,
}

/// Which requests a [`Rule`] applies to: every condition must hold.
#[derive(Clone, Debug, Default)]
pub struct Match {
    method: Option<String>,
    path_contains: Vec<String>,
    path_ends_with: Option<String>,
    query_contains: Vec<String>,
    headers: Vec<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Requests with this method (`PUT`, `POST`, ...).
    pub fn method(method: &str) -> Match {
        Match {
            method: Some(method.to_ascii_uppercase()),
            ..Match::default()
        }
    }

    /// ... whose path (bucket included, not decoded) contains `text`.
    pub fn path_contains(mut self, text: &str) -> Match {
        self.path_contains.push(text.into());
        self
    }

    /// ... whose path ends with `text` (an object key, typically).
    pub fn path_ends_with(mut self, text: &str) -> Match {
        self.path_ends_with = Some(text.into());
        self
    }

    /// ... whose query string contains `text` (`uploads`, `uploadId=`).
    pub fn query_contains(mut self, text: &str) -> Match {
        self.query_contains.push(text.into());
        self
    }

    /// ... that carry this header (`If-None-Match`), whatever its value.
    pub fn header(mut self, name: &str) -> Match {
        self.headers.push(name.to_ascii_lowercase());
        self
    }

    fn matches(&self, request: &RequestHead) -> bool {
        self.method.as_ref().is_none_or(|m| *m == request.method)
            && self
                .path_contains
                .iter()
                .all(|t| request.path().contains(t.as_str()))
            && self
                .path_ends_with
                .as_ref()
                .is_none_or(|t| request.path().ends_with(t.as_str()))
            && self
                .query_contains
                .iter()
                .all(|t| request.query().contains(t.as_str()))
            && self.headers.iter().all(|h| request.header(h).is_some())
    }
}

/// A fault for chosen requests among those a [`Match`] selects.
#[derive(Clone, Debug)]
pub struct Rule {
    matcher: Match,
    /// The first matching request (1-based) that gets the fault.
    first: usize,
    /// How many in a row get it; `None`: all from `first` on.
    count: Option<usize>,
    fault: Fault,
}

impl Rule {
    /// Only the `n`th request (1-based) matching `matcher` gets `fault`.
    pub fn nth(n: usize, matcher: Match, fault: Fault) -> Rule {
        assert!(n >= 1, "requests are counted from 1");
        Rule {
            matcher,
            first: n,
            count: Some(1),
            fault,
        }
    }

    /// Every request matching `matcher` gets `fault`.
    pub fn every(matcher: Match, fault: Fault) -> Rule {
        Rule::from_nth(1, matcher, fault)
    }

    /// The `n`th request matching `matcher` and every one after it get
    /// `fault` (a server that stops answering mid-upload).
    pub fn from_nth(n: usize, matcher: Match, fault: Fault) -> Rule {
        assert!(n >= 1, "requests are counted from 1");
        Rule {
            matcher,
            first: n,
            count: None,
            fault,
        }
    }

    fn fires_on(&self, seen: usize) -> bool {
        seen >= self.first && self.count.is_none_or(|c| seen < self.first + c)
    }
}

/// What the proxy injects: random faults at these rates per request, and
/// targeted rules (which take precedence).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub seed: u64,
    /// Probability of [`Fault::SlowDown`], for any request.
    pub slow_down: f64,
    /// Probability of [`Fault::CutBody`], for a request with a body.
    pub cut_body: f64,
    /// Probability of [`Fault::LoseAnswer`], for a PUT, POST or DELETE.
    pub lose_answer: f64,
    pub rules: Vec<Rule>,
}

impl Faults {
    /// Nothing random; only `rule`.
    pub fn only(rule: Rule) -> Faults {
        Faults {
            rules: vec![rule],
            ..Faults::default()
        }
    }
}

/// What the proxy saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Client connections accepted (fewer than requests: keep-alive works).
    pub connections: u64,
    pub requests: u64,
    pub slow_down: u64,
    pub cut_body: u64,
    pub lost_answer: u64,
    pub stalled: u64,
    pub never_answered: u64,
    /// Requests the proxy failed to forward for reasons of its own (server
    /// unreachable, unparsable reply): a test should expect none.
    pub proxy_errors: u64,
}

impl Counts {
    /// Faults of the three random kinds.
    pub fn injected(&self) -> u64 {
        self.slow_down + self.cut_body + self.lost_answer
    }

    fn count(&mut self, fault: Fault) {
        match fault {
            Fault::SlowDown => self.slow_down += 1,
            Fault::CutBody => self.cut_body += 1,
            Fault::LoseAnswer => self.lost_answer += 1,
            Fault::Stall { .. } => self.stalled += 1,
            Fault::NeverAnswer => self.never_answered += 1,
        }
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;

    fn sub(self, before: Counts) -> Counts {
        Counts {
            connections: self.connections - before.connections,
            requests: self.requests - before.requests,
            slow_down: self.slow_down - before.slow_down,
            cut_body: self.cut_body - before.cut_body,
            lost_answer: self.lost_answer - before.lost_answer,
            stalled: self.stalled - before.stalled,
            never_answered: self.never_answered - before.never_answered,
            proxy_errors: self.proxy_errors - before.proxy_errors,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests on {} connections: {} SlowDown, {} cut mid-body, {} answers lost, {} stalled, {} never answered, {} proxy errors",
            self.requests,
            self.connections,
            self.slow_down,
            self.cut_body,
            self.lost_answer,
            self.stalled,
            self.never_answered,
            self.proxy_errors
        )
    }
}

/// A running proxy; dropping it closes every connection it holds.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Start a proxy to the tests' S3 endpoint that injects `faults`.
    pub fn start(faults: Faults) -> Proxy {
        let endpoint = super::endpoint();
        let upstream = endpoint
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the fault proxy speaks plain http, not {endpoint}"))
            .trim_end_matches('/')
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy: bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            rule_hits: Mutex::new(vec![0; faults.rules.len()]),
            faults,
            upstream,
            seen: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            events: Mutex::new(Vec::new()),
            log: std::env::var("ALITX_PROXY_LOG").is_ok_and(|v| !v.is_empty() && v != "0"),
        });
        // Its own runtime: the proxy keeps serving while the test blocks on
        // a child process, and its tasks die with it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .unwrap();
        let accepting = shared.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("proxy: listener");
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        accepting.counts.lock().unwrap().connections += 1;
                        tokio::spawn(serve(accepting.clone(), client));
                    }
                    Err(e) => {
                        accepting.proxy_error(format!("accept: {e}"));
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Proxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// What `--endpoint-url` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counts(&self) -> Counts {
        *self.shared.counts.lock().unwrap()
    }

    /// One line per injected fault or proxy error, in order.
    pub fn events(&self) -> Vec<String> {
        self.shared.events.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct Shared {
    faults: Faults,
    upstream: String,
    /// How many requests each rule has matched so far.
    rule_hits: Mutex<Vec<usize>>,
    /// How often each request identity was seen (for the random draw).
    seen: Mutex<HashMap<String, u64>>,
    counts: Mutex<Counts>,
    events: Mutex<Vec<String>>,
    log: bool,
}

impl Shared {
    /// The fault for this request, if any: a firing rule, else the draw.
    fn decide(&self, request: &RequestHead) -> Option<Fault> {
        let mut fired = None;
        {
            let mut hits = self.rule_hits.lock().unwrap();
            for (rule, seen) in self.faults.rules.iter().zip(hits.iter_mut()) {
                if rule.matcher.matches(request) {
                    *seen += 1;
                    if fired.is_none() && rule.fires_on(*seen) {
                        fired = Some(rule.fault);
                    }
                }
            }
        }
        fired.or_else(|| self.draw(request))
    }

    fn draw(&self, request: &RequestHead) -> Option<Fault> {
        let f = &self.faults;
        if f.slow_down + f.cut_body + f.lose_answer <= 0.0 {
            return None;
        }
        let identity = request.identity();
        let occurrence = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(identity.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let u = unit(mix(f.seed ^ fnv1a(identity.as_bytes()) ^ mix(occurrence)));
        let has_body = request.body != Framing::Length(0);
        let changes = matches!(request.method.as_str(), "PUT" | "POST" | "DELETE");
        if u < f.slow_down {
            Some(Fault::SlowDown)
        } else if u < f.slow_down + f.cut_body {
            has_body.then_some(Fault::CutBody)
        } else if u < f.slow_down + f.cut_body + f.lose_answer {
            changes.then_some(Fault::LoseAnswer)
        } else {
            None
        }
    }

    fn injected(&self, number: u64, request: &RequestHead, fault: Fault) {
        self.counts.lock().unwrap().count(fault);
        self.note(format!(
            "#{number} {} {}: {fault:?}",
            request.method, request.target
        ));
    }

    fn proxy_error(&self, what: String) {
        self.counts.lock().unwrap().proxy_errors += 1;
        eprintln!("fault proxy error: {what}");
        self.note(format!("proxy error: {what}"));
    }

    /// Add a line to the events (and to stderr when logging).
    fn note(&self, line: String) {
        if self.log {
            eprintln!("proxy: {line}");
        }
        self.events.lock().unwrap().push(line);
    }
}

/// SplitMix64's finaliser: a tiny, good 64-bit mixer.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A uniform draw in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes the connection (responses only).
    UntilEof,
}

/// A message head: the exact bytes, and what was parsed from them.
struct Head {
    raw: Vec<u8>,
    /// The first line's three parts.
    start: [String; 3],
    /// Lower-case names.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// The body framing the headers state (`None`: no framing header).
    fn framing(&self) -> io::Result<Option<Framing>> {
        if self.has_token("transfer-encoding", "chunked") {
            return Ok(Some(Framing::Chunked));
        }
        match self.header("content-length") {
            Some(n) => n
                .trim()
                .parse()
                .map(|n| Some(Framing::Length(n)))
                .map_err(|_| invalid(format!("bad Content-Length {n:?}"))),
            None => Ok(None),
        }
    }

    /// Whether the connection ends after this message.
    fn closes(&self) -> bool {
        self.has_token("connection", "close")
            || (self.start[0] == "HTTP/1.0" || self.start[2] == "HTTP/1.0")
                && !self.has_token("connection", "keep-alive")
    }
}

struct RequestHead {
    head: Head,
    method: String,
    target: String,
    body: Framing,
}

impl RequestHead {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// What stays the same when alitx repeats this request in another run:
    /// the method, the path without the bucket, the query without upload
    /// ids.
    fn identity(&self) -> String {
        let key = self.path().trim_start_matches('/');
        let key = key.split_once('/').map_or("", |(_, k)| k);
        let query: Vec<&str> = self
            .query()
            .split('&')
            .filter(|p| !p.starts_with("uploadId="))
            .collect();
        format!("{} {key}?{}", self.method, query.join("&"))
    }
}

/// Read a message head; `None` at a clean end of stream before it starts.
async fn read_head<R: AsyncBufRead + Unpin>(from: &mut R) -> io::Result<Option<Head>> {
    const MAX_HEAD: usize = 64 << 10;
    let mut raw = Vec::new();
    let mut lines = Vec::new();
    loop {
        let start = raw.len();
        let n = (&mut *from)
            .take((MAX_HEAD - raw.len()) as u64)
            .read_until(b'\n', &mut raw)
            .await?;
        if n == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if !raw.ends_with(b"\n") {
            return Err(invalid("message head too long".into()));
        }
        let line = String::from_utf8_lossy(&raw[start..])
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if line.is_empty() {
            if lines.is_empty() {
                // Stray blank line between messages (RFC 9112 §2.2).
                raw.clear();
                continue;
            }
            break;
        }
        lines.push(line);
    }
    let first = lines.remove(0);
    let mut parts = first.splitn(3, ' ').map(str::to_string);
    let start = [(); 3].map(|_| parts.next().unwrap_or_default());
    let headers = lines
        .iter()
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {l:?}")))?;
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect::<io::Result<_>>()?;
    Ok(Some(Head {
        raw,
        start,
        headers,
    }))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Which side of a copy failed.
enum Broken {
    Read(io::Error),
    Write(io::Error),
}

/// Copy `n` bytes, or everything up to the end of the stream (`None`).
async fn copy_raw<R, W>(from: &mut R, to: &mut W, mut n: Option<u64>) -> Result<(), Broken>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n != Some(0) {
        let buf = from.fill_buf().await.map_err(Broken::Read)?;
        if buf.is_empty() {
            return match n {
                None => Ok(()),
                Some(_) => Err(Broken::Read(io::ErrorKind::UnexpectedEof.into())),
            };
        }
        let take = n.map_or(buf.len(), |n| buf.len().min(n as usize));
        to.write_all(&buf[..take]).await.map_err(Broken::Write)?;
        from.consume(take);
        n = n.map(|n| n - take as u64);
    }
    Ok(())
}

/// Copy one line (up to and including its `\n`); returns it.
async fn copy_line<R, W>(from: &mut R, to: &mut W) -> Result<Vec<u8>, Broken>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    (&mut *from)
        .take(4096)
        .read_until(b'\n', &mut line)
        .await
        .map_err(Broken::Read)?;
    if !line.ends_with(b"\n") {
        return Err(Broken::Read(invalid(format!(
            "bad chunked framing at {:?}",
            String::from_utf8_lossy(&line)
        ))));
    }
    to.write_all(&line).await.map_err(Broken::Write)?;
    Ok(line)
}

/// Copy one body, framing included, from `from` to `to`.
async fn copy_body<R, W>(from: &mut R, to: &mut W, framing: Framing) -> Result<(), Broken>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::Length(n) => copy_raw(from, to, Some(n)).await,
        Framing::UntilEof => copy_raw(from, to, None).await,
        Framing::Chunked => loop {
            let line = copy_line(from, to).await?;
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| Broken::Read(invalid(format!("bad chunk size {size:?}"))))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while copy_line(from, to).await?.len() > 2 {}
                return Ok(());
            }
            copy_raw(from, to, Some(size + 2)).await?;
        },
    }
}

type Conn = BufReader<TcpStream>;

fn buffered(stream: TcpStream) -> Conn {
    let _ = stream.set_nodelay(true);
    BufReader::with_capacity(64 << 10, stream)
}

/// Reset a connection (RST, not FIN) by dropping it with a zero linger.
fn reset(conn: Conn) {
    let _ = conn.get_ref().set_zero_linger();
}

/// Why a forwarded exchange ended early.
enum Failure {
    /// alitx went away (killed, timed out, reset): not the proxy's doing.
    Client,
    /// The proxy could not do its part.
    Proxy(String),
}

/// Serve one client connection, request after request.
async fn serve(shared: Arc<Shared>, client: TcpStream) {
    let mut client = buffered(client);
    loop {
        let head = match read_head(&mut client).await {
            Ok(Some(head)) => head,
            // The client closed its idle connection, or broke it.
            Ok(None) | Err(_) => return,
        };
        let request = match head.framing() {
            Ok(framing) => RequestHead {
                method: head.start[0].clone(),
                target: head.start[1].clone(),
                body: framing.unwrap_or(Framing::Length(0)),
                head,
            },
            Err(e) => return shared.proxy_error(format!("request from alitx: {e}")),
        };
        let number = {
            let mut counts = shared.counts.lock().unwrap();
            counts.requests += 1;
            counts.requests
        };
        let fault = shared.decide(&request);
        if shared.log {
            eprintln!(
                "proxy: #{number} {} {} {fault:?}",
                request.method, request.target
            );
        }
        let Some(fault) = fault else {
            match forward(&shared, &mut client, &request).await {
                Ok(true) => continue,
                Ok(false) | Err(Failure::Client) => return,
                Err(Failure::Proxy(what)) => {
                    shared.proxy_error(format!(
                        "#{number} {} {}: {what}",
                        request.method, request.target
                    ));
                    return reset(client);
                }
            }
        };
        shared.injected(number, &request, fault);
        match inject(&shared, client, &request, number, fault).await {
            Some(kept) => client = kept,
            None => return,
        }
    }
}

async fn connect_upstream(shared: &Shared) -> Result<Conn, Failure> {
    TcpStream::connect(&shared.upstream)
        .await
        .map(buffered)
        .map_err(|e| Failure::Proxy(format!("connecting to {}: {e}", shared.upstream)))
}

/// Send the request's head and body to a fresh server connection.
async fn send_request(
    shared: &Shared,
    client: &mut Conn,
    request: &RequestHead,
) -> Result<Conn, Failure> {
    let mut upstream = connect_upstream(shared).await?;
    let server = |e: io::Error| Failure::Proxy(format!("sending to the server: {e}"));
    upstream
        .get_mut()
        .write_all(&request.head.raw)
        .await
        .map_err(server)?;
    match copy_body(client, upstream.get_mut(), request.body).await {
        Ok(()) => Ok(upstream),
        Err(Broken::Read(_)) => Err(Failure::Client),
        Err(Broken::Write(e)) => Err(server(e)),
    }
}

/// Read the server's answer (interim 1xx answers included) and pass it to
/// `to`; returns its status and whether the connection may carry another
/// request.
async fn relay_response<W: AsyncWrite + Unpin>(
    upstream: &mut Conn,
    to: &mut W,
    request: &RequestHead,
) -> Result<(u16, bool), Failure> {
    let server = |what: String| Failure::Proxy(format!("reading the answer: {what}"));
    loop {
        let head = read_head(upstream)
            .await
            .map_err(|e| server(e.to_string()))?
            .ok_or_else(|| server("the server closed the connection without answering".into()))?;
        let status: u16 = head.start[1]
            .parse()
            .map_err(|_| server(format!("bad status line {:?}", head.start)))?;
        let interim = (100..200).contains(&status) && status != 101;
        let framing = if request.method == "HEAD" || status == 204 || status == 304 || interim {
            Framing::Length(0)
        } else {
            head.framing()
                .map_err(|e| server(e.to_string()))?
                .unwrap_or(Framing::UntilEof)
        };
        to.write_all(&head.raw).await.map_err(|_| Failure::Client)?;
        if interim {
            continue;
        }
        match copy_body(upstream, to, framing).await {
            Ok(()) => {}
            Err(Broken::Read(e)) => return Err(server(e.to_string())),
            Err(Broken::Write(_)) => return Err(Failure::Client),
        }
        to.flush().await.map_err(|_| Failure::Client)?;
        let keep = framing != Framing::UntilEof && !head.closes() && !request.head.closes();
        return Ok((status, keep));
    }
}

/// Forward one request and its answer faithfully; returns whether the
/// client connection may carry another request.
async fn forward(
    shared: &Shared,
    client: &mut Conn,
    request: &RequestHead,
) -> Result<bool, Failure> {
    let mut upstream = send_request(shared, client, request).await?;
    let (_, keep) = relay_response(&mut upstream, client.get_mut(), request).await?;
    Ok(keep)
}

/// The S3 error a throttled server answers.
fn slow_down_answer(request: &RequestHead) -> String {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message>\
                <RequestId>fault-proxy</RequestId></Error>";
    format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: fault-proxy\r\n\r\n{}",
        body.len(),
        if request.method == "HEAD" { "" } else { body }
    )
}

/// Apply `fault` to `request`; returns the client connection if it can
/// carry another request.
async fn inject(
    shared: &Shared,
    mut client: Conn,
    request: &RequestHead,
    number: u64,
    fault: Fault,
) -> Option<Conn> {
    match fault {
        Fault::SlowDown => {
            copy_body(&mut client, &mut tokio::io::sink(), request.body)
                .await
                .ok()?;
            let answer = slow_down_answer(request);
            client.get_mut().write_all(answer.as_bytes()).await.ok()?;
            Some(client).filter(|_| !request.head.closes())
        }
        Fault::CutBody => {
            let mut upstream = match connect_upstream(shared).await {
                Ok(upstream) => upstream,
                Err(failure) => {
                    if let Failure::Proxy(what) = failure {
                        shared.proxy_error(what);
                    }
                    reset(client);
                    return None;
                }
            };
            let head = &request.head.raw;
            let server = upstream.get_mut();
            match request.body {
                Framing::Length(0) => {
                    let _ = server.write_all(&head[..head.len() / 2]).await;
                }
                Framing::Length(n) => {
                    if server.write_all(head).await.is_ok() {
                        let _ = copy_raw(&mut client, server, Some(n / 2)).await;
                    }
                }
                Framing::Chunked | Framing::UntilEof => {
                    let mut body = Vec::new();
                    let _ = copy_body(&mut client, &mut body, request.body).await;
                    if server.write_all(head).await.is_ok() {
                        let _ = server.write_all(&body[..body.len() / 2]).await;
                    }
                }
            }
            reset(upstream);
            reset(client);
            None
        }
        Fault::LoseAnswer => {
            let answered = match send_request(shared, &mut client, request).await {
                Ok(mut upstream) => {
                    relay_response(&mut upstream, &mut tokio::io::sink(), request).await
                }
                Err(failure) => Err(failure),
            };
            match answered {
                Ok((status, _)) => {
                    shared.note(format!("#{number}: the lost answer was HTTP {status}"))
                }
                Err(Failure::Proxy(what)) => shared.proxy_error(what),
                Err(Failure::Client) => {}
            }
            reset(client);
            None
        }
        Fault::Stall { after_body_bytes } => {
            let mut upstream = connect_upstream(shared).await.ok()?;
            upstream.get_mut().write_all(&request.head.raw).await.ok()?;
            let n = match request.body {
                Framing::Length(n) => n.min(after_body_bytes),
                Framing::Chunked | Framing::UntilEof => after_body_bytes,
            };
            copy_raw(&mut client, upstream.get_mut(), Some(n))
                .await
                .ok()?;
            // Hold both connections, forwarding nothing, until the proxy
            // stops.
            let _held = (client, upstream);
            std::future::pending().await
        }
        Fault::NeverAnswer => {
            // Swallow whatever the client sends, until it gives up.
            let _ = copy_raw(&mut client, &mut tokio::io::sink(), None).await;
            None
        }
    }
}
