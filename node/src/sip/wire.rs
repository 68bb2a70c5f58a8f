//! The SIP socket's gate: every datagram is screened before the
//! transaction layer sees it. rsipstack drops what it cannot parse without
//! a word; here an oversize request gets 513, a request with an unknown
//! method 501, and one whose Via, From, To, Call-ID or CSeq is missing or
//! broken 400, each answered statelessly with the headers it did carry
//! (RFC 3261 §8.2.1, §8.2.2, §18.1.1, §21.4.1). What carries no usable
//! headers at all cannot be answered, and is dropped and logged.
//!
//! Every request also needs a place in [`Admission`]'s one-second window
//! (a share per source address and a total), or it is answered 503 with
//! `Retry-After` without reaching the transaction layer: each request
//! passed on may hold a server transaction for up to 32 s, so this bounds
//! what a flood can make the service hold. The stateless error answers
//! count against the same window and past it are not sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rsipstack::platform::net::UdpSocket as PlatformUdpSocket;
use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::{Header, Headers, Method, Request, Response, SipMessage, StatusCode, Version};

/// Largest SIP message taken over UDP, bytes (rsipstack's own buffer).
pub const MAX_SIP_MESSAGE: usize = 8192;
/// Methods this service answers.
pub const ALLOWED: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, SUBSCRIBE";

/// Requests passed on per second from one source address.
pub const PER_SOURCE_PER_SEC: u32 = 50;
/// Requests passed on per second in all.
pub const TOTAL_PER_SEC: u32 = 200;
/// Source addresses counted in one second; requests from more wait.
pub const MAX_SOURCES: usize = 1024;

/// The one-second window of requests passed on: a share per source
/// address and a total, forgotten each second. Pure: callers pass `now`.
#[derive(Debug, Default)]
pub struct Admission {
    second: u64,
    total: u32,
    per_source: HashMap<IpAddr, u32>,
}

impl Admission {
    /// Counts one request from `source` in second `now`, if it fits.
    pub fn admit(&mut self, source: IpAddr, now: u64) -> bool {
        if now != self.second {
            self.second = now;
            self.total = 0;
            self.per_source.clear();
        }
        if self.total >= TOTAL_PER_SEC
            || (!self.per_source.contains_key(&source) && self.per_source.len() >= MAX_SOURCES)
        {
            return false;
        }
        let n = self.per_source.entry(source).or_default();
        if *n >= PER_SOURCE_PER_SEC {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
}

/// What to do with one datagram.
#[derive(Debug)]
pub enum Screened {
    /// Hand it to the transaction layer.
    Pass,
    /// A request to hand on, once [`Admission`] has room for it.
    Request(Box<Request>),
    /// Answer with these bytes, and drop it.
    Answer(Vec<u8>),
    /// Drop it: there is nothing to address an answer to.
    Drop(&'static str),
}

/// Screens one datagram. Pure.
pub fn screen(datagram: &[u8]) -> Screened {
    if datagram.iter().all(u8::is_ascii_whitespace) {
        return Screened::Pass; // keep-alives; rsipstack handles them
    }
    let oversize = datagram.len() > MAX_SIP_MESSAGE;
    match SipMessage::try_from(datagram) {
        Ok(SipMessage::Request(req)) => {
            if req.method == Method::Ack {
                // ACK is never answered.
                return if oversize {
                    Screened::Drop("oversize ACK")
                } else {
                    Screened::Pass
                };
            }
            if oversize {
                return answer(&req, StatusCode::MessageTooLarge, None);
            }
            if let Err(why) = well_formed(&req) {
                tracing::debug!("sip: 400 for a malformed {}: {why}", req.method);
                return answer(&req, StatusCode::BadRequest, None);
            }
            Screened::Request(Box::new(req))
        }
        Ok(SipMessage::Response(_)) if oversize => Screened::Drop("oversize response"),
        Ok(SipMessage::Response(_)) => Screened::Pass,
        Err(_) => unknown_method(datagram),
    }
}

/// The headers every request needs, parsed, and a CSeq that names the
/// request's method.
fn well_formed(req: &Request) -> Result<(), String> {
    req.via_header()
        .map_err(|e| format!("Via: {e}"))?
        .typed()
        .map_err(|e| format!("Via: {e}"))?;
    req.from_header().map_err(|e| format!("From: {e}"))?;
    req.to_header().map_err(|e| format!("To: {e}"))?;
    req.call_id_header().map_err(|e| format!("Call-ID: {e}"))?;
    let cseq = req
        .cseq_header()
        .and_then(|c| c.typed())
        .map_err(|e| format!("CSeq: {e}"))?;
    if cseq.method != req.method && req.method != Method::Cancel {
        return Err(format!("CSeq names {} on a {}", cseq.method, req.method));
    }
    Ok(())
}

/// A request line with a method rsipstack does not know: read its headers
/// as if it were OPTIONS, and answer 501.
fn unknown_method(datagram: &[u8]) -> Screened {
    let text = String::from_utf8_lossy(datagram);
    let Some((line, rest)) = text.split_once("\r\n") else {
        return Screened::Drop("no request line");
    };
    let mut parts = line.splitn(3, ' ');
    let (Some(method), Some(uri), Some("SIP/2.0")) = (parts.next(), parts.next(), parts.next())
    else {
        return Screened::Drop("unparseable message");
    };
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
    {
        return Screened::Drop("unparseable request line");
    }
    let as_options = format!("OPTIONS {uri} SIP/2.0\r\n{rest}");
    match SipMessage::try_from(as_options.as_bytes()) {
        Ok(SipMessage::Request(req))
            if req.via_header().is_ok() && req.call_id_header().is_ok() =>
        {
            tracing::debug!("sip: 501 for method {method}");
            answer(
                &req,
                StatusCode::NotImplemented,
                Some(Header::Allow(ALLOWED.into())),
            )
        }
        _ => Screened::Drop("unparseable message"),
    }
}

/// A stateless answer to `req`: its Via, From, To (with a tag), Call-ID and
/// CSeq, as they came.
fn answer(req: &Request, code: StatusCode, extra: Option<Header>) -> Screened {
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(to) => match to.tag() {
                Ok(Some(_)) => headers.push(h.clone()),
                _ => headers.push(Header::To(to.with_tag(rsipstack::transaction::make_tag()))),
            },
            _ => {}
        }
    }
    if req.via_header().is_err() {
        return Screened::Drop("no Via to answer along");
    }
    headers.extend(extra.into_iter().collect::<Vec<_>>());
    headers.push(Header::ContentLength(0u32.into()));
    let resp = Response {
        status_code: code,
        wire_reason: None,
        version: Version::V2,
        headers,
        body: Vec::new(),
    };
    Screened::Answer(SipMessage::Response(resp).to_string().into_bytes())
}

/// The UDP socket rsipstack reads, with [`screen`] and [`Admission`] in
/// front of it.
#[derive(Debug)]
pub struct GatedSocket {
    socket: Arc<tokio::net::UdpSocket>,
    admission: Mutex<Admission>,
    /// Requests answered 503 for want of room.
    refused: Arc<AtomicU64>,
}

impl GatedSocket {
    /// Gates `socket`; requests refused for want of room are counted in
    /// `refused`.
    pub fn new(socket: tokio::net::UdpSocket, refused: Arc<AtomicU64>) -> Self {
        GatedSocket {
            socket: Arc::new(socket),
            admission: Mutex::new(Admission::default()),
            refused,
        }
    }

    fn admit(&self, from: SocketAddr) -> bool {
        self.admission
            .lock()
            .expect("admission lock")
            .admit(from.ip(), vmail_proto::unix_now())
    }
}

#[tonic::async_trait]
impl PlatformUdpSocket for GatedSocket {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        // One byte more than the largest message shows an oversize one.
        let mut big = vec![0u8; 65_536];
        loop {
            let (len, from) = self.socket.recv_from(&mut big).await?;
            let datagram = &big[..len];
            let verdict = match screen(datagram) {
                Screened::Request(req) if !self.admit(from) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    let retry = Header::RetryAfter("1".into());
                    answer(&req, StatusCode::ServiceUnavailable, Some(retry))
                }
                Screened::Request(_) => Screened::Pass,
                // Error answers count against the window too; past it they
                // are not sent, so a spoofed flood reflects nothing more.
                Screened::Answer(_) if !self.admit(from) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    Screened::Drop("over the request rate")
                }
                other => other,
            };
            match verdict {
                Screened::Pass if len <= buf.len() => {
                    buf[..len].copy_from_slice(datagram);
                    return Ok((len, from));
                }
                Screened::Pass => {
                    tracing::debug!("sip: dropped {len} bytes from {from}: larger than the buffer")
                }
                Screened::Answer(bytes) => {
                    let _ = self.socket.send_to(&bytes, from).await;
                }
                Screened::Drop(why) => {
                    tracing::debug!("sip: dropped {len} bytes from {from}: {why}")
                }
                Screened::Request(_) => unreachable!("admitted or refused above"),
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS: &str = "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c1\r\nMax-Forwards: 70\r\n";

    fn status(s: Screened) -> String {
        match s {
            Screened::Answer(b) => String::from_utf8(b)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn each_kind_of_bad_request_gets_its_answer() {
        let ok = format!(
            "OPTIONS sip:h SIP/2.0\r\n{HEADERS}CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        assert!(matches!(screen(ok.as_bytes()), Screened::Request(_)));
        let foo = ok
            .replace("OPTIONS sip", "FOO sip")
            .replace("1 OPTIONS", "1 FOO");
        let answer = status(screen(foo.as_bytes()));
        assert!(answer.starts_with("SIP/2.0 501"), "{answer}");
        let bad_cseq = ok.replace("1 OPTIONS", "abc OPTIONS");
        assert!(status(screen(bad_cseq.as_bytes())).starts_with("SIP/2.0 400"));
        let mismatched = ok.replace("1 OPTIONS", "1 INVITE");
        assert!(status(screen(mismatched.as_bytes())).starts_with("SIP/2.0 400"));
        let big = ok.replace(
            "Content-Length: 0\r\n",
            &format!(
                "Subject: {}\r\nContent-Length: 0\r\n",
                "x".repeat(MAX_SIP_MESSAGE)
            ),
        );
        assert!(status(screen(big.as_bytes())).starts_with("SIP/2.0 513"));
        assert!(matches!(screen(b"\x00\x01garbage"), Screened::Drop(_)));
    }

    #[test]
    fn each_source_gets_its_share_of_a_second_and_all_share_a_total() {
        let mut a = Admission::default();
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let passed = (0..100).filter(|_| a.admit(x, 7)).count();
        assert_eq!(passed, PER_SOURCE_PER_SEC as usize);
        // Another source still has its share.
        assert!(a.admit(y, 7));
        // The next second starts afresh.
        assert!(a.admit(x, 8));
        // The total holds however many sources there are.
        let mut b = Admission::default();
        let spread = (0..TOTAL_PER_SEC * 2)
            .filter(|i| b.admit(IpAddr::from(i.to_be_bytes()), 9))
            .count();
        assert_eq!(spread, TOTAL_PER_SEC as usize);
    }

    #[test]
    fn a_stateless_answer_echoes_the_dialog_headers_and_tags_the_to() {
        let foo = format!("FOO sip:h SIP/2.0\r\n{HEADERS}CSeq: 7 FOO\r\nContent-Length: 0\r\n\r\n");
        let Screened::Answer(b) = screen(foo.as_bytes()) else {
            panic!()
        };
        let text = String::from_utf8(b).unwrap();
        assert!(text.contains("Call-ID: c1"), "{text}");
        assert!(text.contains("CSeq: 7 FOO"), "{text}");
        assert!(text.contains("branch=z9hG4bK1"), "{text}");
        assert!(text.contains("To: <sip:a@h>;tag="), "{text}");
        assert!(text.contains("Allow: INVITE"), "{text}");
    }
}
