//! A quick RTSP handshake before OpenCV opens a stream.
//!
//! OpenCV's FFmpeg backend opens captures one at a time process-wide (it holds a global lock
//! while `avformat_open_input` and the stream probing run), so a camera that accepts a
//! connection and never answers, or an address nobody routes, would hold every other camera's
//! (re)connection for the whole open timeout. Asking for `OPTIONS` first, with short
//! timeouts and on the capture's own thread, finds such cameras down without taking that lock.
//! Any RTSP answer counts (401 included: the credentials are OpenCV's business).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The camera answers RTSP at `url` within `timeout` (per step: connect, then answer); the
/// error names the host and port, never the credentials.
pub fn rtsp_answers(url: &str, timeout: Duration) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().ok_or("no host in the URL")?.to_string();
    let port = parsed.port().unwrap_or(554);
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: cannot resolve: {e}"))?
        .collect();
    let mut stream = None;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut s = stream.ok_or_else(|| format!("{host}:{port}: cannot connect: {last}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let target = format!("rtsp://{host}:{port}{}", parsed.path());
    let request = format!("OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: vigil\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("{host}:{port}: no RTSP answer ({e})")),
        }
    }
    if head[..got].starts_with(b"RTSP/") {
        Ok(())
    } else {
        Err(format!("{host}:{port}: not an RTSP answer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_port_and_a_closed_one_fail_fast_and_an_rtsp_answer_passes() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("rtsp://u:secret@{}/x", silent.local_addr().unwrap());
        let started = std::time::Instant::now();
        let e = rtsp_answers(&url, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(e.contains("no RTSP answer") && !e.contains("secret"), "{e}");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = rtsp_answers(&format!("rtsp://{closed}/x"), Duration::from_millis(300));
        assert!(e.unwrap_err().contains("cannot connect"));

        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = server.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf).unwrap();
            c.write_all(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n\r\n")
                .unwrap();
        });
        rtsp_answers(&format!("rtsp://{addr}/stream1"), Duration::from_secs(2)).unwrap();
        t.join().unwrap();
    }
}
