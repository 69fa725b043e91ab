//! HTTP/1.1 for the boot tree (RFC 9110 GET/HEAD with a single byte Range,
//! RFC 9112 framing with keep-alive): iPXE and UEFI HTTP boot fetch kernels
//! much faster over TCP, and `sanboot http://` needs Range.
//!
//! Hand-written rather than hyper: the surface is two methods on static
//! content, and owning the parser keeps every bound explicit (header bytes,
//! connections, idle time) with no new dependency tree. Names go through the
//! same path rules as TFTP.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info_span, warn, Instrument};

use crate::paths::Refusal;
use crate::proto::Source;
use crate::server::{Body, Shared};

/// Largest request head accepted (request line and headers).
const MAX_HEAD: usize = 8192;
/// A connection idle this long between requests is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Chunk size when streaming a file that is not in memory.
const CHUNK: usize = 256 << 10;

pub(crate) async fn listener(l: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(
        shared.config.http_max_connections,
    ));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = l.accept() => {
                let Ok((stream, peer)) = r else { continue };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    debug!(%peer, "http connection limit reached");
                    continue;
                };
                let shared = shared.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    let _ = serve(stream, &shared).await;
                }.instrument(info_span!("http", %peer)));
            }
        }
    }
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        conns.abort_all();
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    pub keep_alive: bool,
    pub range: Option<String>,
    pub has_body: bool,
}

/// Parses a request head (without the final blank line).
pub(crate) fn parse_head(head: &str) -> Option<Head> {
    let mut lines = head.split("\r\n");
    let mut req = lines.next()?.split(' ');
    let (method, target, version) = (req.next()?, req.next()?, req.next()?);
    if req.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut range = None;
    let mut has_body = false;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "connection" => {
                let v = v.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            "range" => range = Some(v.to_owned()),
            "content-length" => has_body |= v != "0",
            "transfer-encoding" => has_body = true,
            _ => {}
        }
    }
    Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        keep_alive,
        range,
        has_body,
    })
}

/// `Range: bytes=a-b` against a body of `len` bytes: `Ok(None)` serves the
/// whole body (no or ignored range: several ranges, other units),
/// `Ok(Some((start, end_inclusive)))` a part, `Err(())` is unsatisfiable.
pub(crate) fn parse_range(range: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            let e: u64 = b.parse().map_err(|_| ())?;
            if e < s {
                return Err(());
            }
            e.min(len.saturating_sub(1))
        };
        (s, e)
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

async fn respond(
    s: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status}\r\nServer: anyboot-tftpd\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if !keep_alive {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    s.write_all(h.as_bytes()).await
}

async fn error(s: &mut TcpStream, status: &str, keep_alive: bool) -> std::io::Result<()> {
    let body = format!("{status}\n");
    respond(
        s,
        status,
        &[
            ("Content-Length", body.len().to_string()),
            ("Content-Type", "text/plain".into()),
        ],
        keep_alive,
    )
    .await?;
    s.write_all(body.as_bytes()).await
}

async fn serve(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read one head (bounded), keeping pipelined bytes for the next round.
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            if buf.len() > MAX_HEAD {
                error(&mut s, "431 Request Header Fields Too Large", false).await?;
                return Ok(());
            }
            let mut chunk = [0u8; 2048];
            let n = match tokio::time::timeout(IDLE, s.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let Some(head) = parse_head(&head_text) else {
            error(&mut s, "400 Bad Request", false).await?;
            return Ok(());
        };
        if head.has_body {
            error(&mut s, "400 Bad Request", false).await?;
            return Ok(());
        }
        let keep = head.keep_alive;
        let get = match head.method.as_str() {
            "GET" => true,
            "HEAD" => false,
            _ => {
                respond(
                    &mut s,
                    "405 Method Not Allowed",
                    &[
                        ("Allow", "GET, HEAD".into()),
                        ("Content-Length", "0".into()),
                    ],
                    keep,
                )
                .await?;
                if !keep {
                    return Ok(());
                }
                continue;
            }
        };
        let path = head.target.split(['?', '#']).next().unwrap_or("");
        let name = match path.strip_prefix('/').and_then(percent_decode) {
            Some(n) => n,
            None => {
                error(&mut s, "400 Bad Request", false).await?;
                return Ok(());
            }
        };
        let body = match shared.open(&name).await {
            Ok((_, b)) => b,
            Err(Refusal::NotFound) => {
                error(&mut s, "404 Not Found", keep).await?;
                if !keep {
                    return Ok(());
                }
                continue;
            }
            Err(Refusal::AccessViolation(why)) => {
                debug!(path, why, "refused");
                error(&mut s, "403 Forbidden", keep).await?;
                if !keep {
                    return Ok(());
                }
                continue;
            }
        };
        let len = body.len();
        let ctype = if path.ends_with(".ipxe") || path.contains("pxelinux.cfg/") {
            "text/plain"
        } else {
            "application/octet-stream"
        };
        let (status, start, end) = match parse_range(head.range.as_deref(), len) {
            Ok(None) => ("200 OK", 0, len),
            Ok(Some((a, b))) => ("206 Partial Content", a, b + 1),
            Err(()) => {
                respond(
                    &mut s,
                    "416 Range Not Satisfiable",
                    &[
                        ("Content-Range", format!("bytes */{len}")),
                        ("Content-Length", "0".into()),
                    ],
                    keep,
                )
                .await?;
                if !keep {
                    return Ok(());
                }
                continue;
            }
        };
        let mut headers = vec![
            ("Content-Length", (end - start).to_string()),
            ("Content-Type", ctype.to_owned()),
            ("Accept-Ranges", "bytes".to_owned()),
        ];
        if status.starts_with("206") {
            headers.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
        }
        respond(&mut s, status, &headers, keep).await?;
        if get {
            send_body(&mut s, body, start, end).await?;
        }
        if !keep {
            s.shutdown().await?;
            return Ok(());
        }
    }
}

async fn send_body(s: &mut TcpStream, body: Body, start: u64, end: u64) -> std::io::Result<()> {
    match body {
        Body::Memory(b) => s.write_all(&b[start as usize..end as usize]).await,
        Body::File(f) => {
            let f = Arc::new(f);
            let mut off = start;
            while off < end {
                let n = CHUNK.min((end - off) as usize);
                let f2 = f.clone();
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut v = vec![0u8; n];
                    let got = f2.read_at(off, &mut v)?;
                    v.truncate(got);
                    Ok::<_, std::io::Error>(v)
                })
                .await
                .map_err(std::io::Error::other)??;
                if chunk.is_empty() {
                    warn!("file shrank while being served");
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                off += chunk.len() as u64;
                s.write_all(&chunk).await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=-4"), 10), Ok(Some((6, 9))));
        assert_eq!(parse_range(Some("bytes=-40"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=x-2"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
    }

    #[test]
    fn heads() {
        let h = parse_head("GET /a%20b HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2").unwrap();
        assert_eq!(h.method, "GET");
        assert!(h.keep_alive);
        assert_eq!(h.range.as_deref(), Some("bytes=1-2"));
        assert!(!parse_head("GET /a HTTP/1.0\r\nHost: x").unwrap().keep_alive);
        assert!(
            !parse_head("GET /a HTTP/1.1\r\nConnection: close")
                .unwrap()
                .keep_alive
        );
        assert!(
            parse_head("GET /a HTTP/1.1\r\nContent-Length: 5")
                .unwrap()
                .has_body
        );
        assert!(parse_head("GET /a SPDY/3").is_none());
        assert!(parse_head("GET /a HTTP/1.1\r\nbroken").is_none());
        assert_eq!(percent_decode("a%2Fb%41").unwrap(), b"a/bA");
        assert!(percent_decode("a%4").is_none());
    }
}
