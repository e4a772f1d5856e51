//! `--healthcheck`: the container health probe. A scratch image has no curl,
//! so the binary checks itself: it asks its own `/health` on the port the
//! same flags would listen on and exits 0 on a 200, 1 otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Probes `GET /health` at `listen` (a wildcard address means loopback) and
/// returns the process exit code. Plain std I/O: no runtime, no client crate.
pub fn probe(listen: SocketAddr) -> i32 {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = Duration::from_secs(2);
    let answer = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(stream, "GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut head = [0u8; 16];
        let n = stream.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match answer {
        Ok(status) if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") => 0,
        Ok(status) => {
            eprintln!("{addr}/health answered {status:?}");
            1
        }
        Err(e) => {
            eprintln!("{addr}/health: {e}");
            1
        }
    }
}
