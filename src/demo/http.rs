//! A minimal keep-alive HTTP/1.1 client for talking to the gateway over loopback (the demo and
//! the replay driver): JSON in, status + headers + body out, content-length or chunked.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Response {
    pub status: u16,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub struct Client {
    addr: SocketAddr,
    auth: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(addr: SocketAddr, bearer: &str) -> Client {
        Client {
            addr,
            auth: format!("Bearer {bearer}"),
            conn: None,
            buf: Vec::new(),
        }
    }

    /// One request; reconnects once if a kept-alive connection was closed.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        match self.try_send(method, path, body, headers).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.conn = None;
                self.buf.clear();
                self.try_send(method, path, body, headers).await
            }
        }
    }

    async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.conn = Some(s);
        }
        let payload = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\ncontent-length: {}\r\n",
            self.addr,
            self.auth,
            payload.len()
        );
        if body.is_some() {
            head.push_str("content-type: application/json\r\n");
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
        let sock = self.conn.as_mut().ok_or_else(eof)?;
        sock.write_all(head.as_bytes()).await?;
        sock.write_all(&payload).await?;
        // Head.
        let end = loop {
            if let Some(e) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break e;
            }
            let mut chunk = [0u8; 16384];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Err(eof());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: HashMap<String, String> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let mut body = Vec::new();
        if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(e) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break e;
                    }
                    let mut chunk = [0u8; 16384];
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("0")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    let mut chunk = [0u8; 16384];
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            let len = headers
                .get("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while self.buf.len() < len {
                let mut chunk = [0u8; 16384];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Err(eof());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            body = self.buf.drain(..len).collect();
        }
        if headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
            self.buf.clear();
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}
