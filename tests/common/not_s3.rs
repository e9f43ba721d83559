//! A server that is not S3, as alitx meets one in front of a store: a
//! credential proxy whose token went stale, a gateway without its keys. It
//! answers every request with one fixed status and JSON body, and closes the
//! connection; point alitx at it with `AWS_ENDPOINT_URL` [`NotS3::url`].

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the server says in its `Server` header.
pub const SERVER: &str = "security-proxy-test/1.0";

/// A running server; dropping it stops it.
pub struct NotS3 {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl NotS3 {
    /// Answer every request with `status` and `body` (as JSON).
    pub fn start(status: u16, body: &str) -> NotS3 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("not-S3 server: bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        // Its own runtime, as the fault proxy's: it serves while the test
        // blocks on a child process.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("not-s3")
            .enable_all()
            .build()
            .unwrap();
        let body = body.to_string();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("not-S3 server: listener");
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(answer(client, status, body.clone()));
            }
        });
        NotS3 {
            addr,
            runtime: Some(runtime),
        }
    }

    /// What `AWS_ENDPOINT_URL` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for NotS3 {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Read one request (its head, and a body of `Content-Length` bytes), answer
/// it, close the connection.
async fn answer(client: TcpStream, status: u16, body: String) -> std::io::Result<()> {
    let mut client = BufReader::new(client);
    let (mut method, mut length) = (None, 0u64);
    loop {
        let mut line = String::new();
        if client.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        match (&method, line.split_once(':')) {
            (None, _) => method = line.split(' ').next().map(str::to_string),
            (Some(_), Some((name, value))) if name.eq_ignore_ascii_case("content-length") => {
                length = value.trim().parse().unwrap_or(0)
            }
            _ => {}
        }
    }
    tokio::io::copy(&mut (&mut client).take(length), &mut tokio::io::sink()).await?;
    // A HEAD's answer has the headers of a GET's, without its body.
    let shown = if method.as_deref() == Some("HEAD") {
        ""
    } else {
        &body
    };
    let answer = format!(
        "HTTP/1.1 {status} Refused\r\nServer: {SERVER}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{shown}",
        body.len()
    );
    client.get_mut().write_all(answer.as_bytes()).await?;
    client.get_mut().shutdown().await
}
