//! A peer with a SIP front on a small real net (auth server, holders, bob
//! on another peer), and a bare SIP user agent over UDP for measuring it:
//! requests are written as text, everything received is parsed by
//! rsipstack's parser, digest answers are computed by its
//! `DigestGenerator`. Shared by `tests/tests/sip.rs` and
//! `tests/benches/sip.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsipstack::sip::headers::auth::{Algorithm, AuthQop};
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::typed::WwwAuthenticate;
use rsipstack::sip::{DigestGenerator, Method, Request, Response, SipMessage, Uri};
use tempfile::TempDir;
use tokio::net::UdpSocket;
use vmail_node::config::SipConfig;
use vmail_node::peer::{Peer, no_progress};
use vmail_node::sip::{self, SipService, SipStatus, audio};

use crate::sipp::Sipp;
use crate::{TestNet, leave_request, login_on};

/// The SIP password of alice's softphone.
pub const PASSWORD: &str = "softphone-secret";

/// alice's peer with a SIP front, on a net with bob and holders.
#[derive(Debug)]
pub struct Phone {
    /// The auth server, holders, and bob on `net.peers[1]`.
    pub net: TestNet,
    /// alice's peer, logged in.
    pub alice: Arc<Peer>,
    /// Its SIP front on 127.0.0.1.
    pub sip: SipService,
    _dir: TempDir,
}

impl Phone {
    /// Starts it all; `edit` changes the `[sip]` settings.
    pub async fn start(edit: impl FnOnce(&mut SipConfig)) -> Self {
        let net = TestNet::start(3).await;
        let mut config = net.config().await;
        config.replicas = Some(2);
        let alice = Arc::new(net.start_peer("alice", config).await);
        login_on(&net.auth, &alice, "alice").await;
        net.login(1, "bob").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = sip::set_password(dir.path(), PASSWORD).expect("password");
        let mut sip_config = SipConfig {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            ..SipConfig::default()
        };
        edit(&mut sip_config);
        let sip = SipService::start(alice.clone(), sip_config, file)
            .await
            .expect("SIP starts");
        Phone {
            net,
            alice,
            sip,
            _dir: dir,
        }
    }

    /// Where SIP is served.
    pub fn addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    /// sipp on `scenario` as alice's softphone.
    pub fn sipp(&self, scenario: &str) -> Sipp {
        Sipp::new(scenario, self.addr()).credentials("alice", PASSWORD)
    }

    /// bob leaves `pcm` (8 kHz) for alice as a WAV; returns its id.
    pub async fn bob_leaves(&self, pcm: &[i16]) -> [u8; 16] {
        let mut req = leave_request(&["alice"], audio::pcm_to_wav(pcm), 2);
        req.content_type = "audio/wav".into();
        self.net.peers[1]
            .leave(req, no_progress())
            .await
            .expect("bob leaves")
            .voicemail_id
    }

    /// Waits (30 s at most) until the SIP front's status satisfies `ok`.
    pub async fn until(&self, what: &str, ok: impl Fn(&SipStatus) -> bool) {
        let end = Instant::now() + Duration::from_secs(30);
        while !ok(&self.sip.status()) {
            assert!(Instant::now() < end, "{what}: {:?}", self.sip.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A bare SIP user agent on UDP, logged in as alice.
#[derive(Debug)]
pub struct Agent {
    /// Its SIP socket.
    pub socket: UdpSocket,
    server: SocketAddr,
    call_id: String,
    cseq: u32,
    /// Requests the server sent while a response was awaited.
    pub queued: Vec<Request>,
}

impl Agent {
    /// An agent talking to `server`, in a dialog of its own Call-ID.
    pub async fn new(server: SocketAddr) -> Self {
        Agent {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            server,
            call_id: format!("probe-{}", rand::random::<u32>()),
            cseq: 0,
            queued: Vec::new(),
        }
    }

    fn me(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound")
    }

    async fn receive(&mut self, timeout: Duration) -> SipMessage {
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(timeout, self.socket.recv_from(&mut buf))
            .await
            .expect("an answer in time")
            .expect("recv");
        SipMessage::try_from(&buf[..n]).expect("the server sends SIP")
    }

    /// Answers a request of the server's with 200.
    pub async fn ok(&self, req: &Request) {
        let mut text = String::from("SIP/2.0 200 OK\r\n");
        for h in req.headers.iter() {
            let line = h.to_string();
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
                text.push_str(&format!("{line}\r\n"));
            }
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.socket
            .send_to(text.as_bytes(), self.server)
            .await
            .expect("send");
    }

    /// Sends a request (answering one digest challenge) and returns its
    /// final response. `headers` may carry a Contact of its own in place
    /// of the agent's.
    pub async fn request(
        &mut self,
        method: Method,
        uri: &str,
        headers: &str,
        body: &str,
    ) -> Response {
        let mut auth = String::new();
        let contact = if headers.contains("Contact:") {
            String::new()
        } else {
            format!("Contact: <sip:alice@{}>\r\n", self.me())
        };
        for _ in 0..2 {
            self.cseq += 1;
            let text = format!(
                "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{srv}>;tag=probe\r\nTo: <{uri}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{contact}{auth}{headers}Content-Length: {len}\r\n\r\n{body}",
                me = self.me(),
                branch = rand::random::<u64>(),
                srv = self.server,
                cid = self.call_id,
                cseq = self.cseq,
                len = body.len(),
            );
            self.socket
                .send_to(text.as_bytes(), self.server)
                .await
                .expect("send");
            let resp = loop {
                match self.receive(Duration::from_secs(30)).await {
                    SipMessage::Response(r) if u16::from(r.status_code.clone()) >= 200 => break r,
                    SipMessage::Response(_) => {}
                    SipMessage::Request(r) => {
                        self.ok(&r).await;
                        self.queued.push(r);
                    }
                }
            };
            if u16::from(resp.status_code.clone()) != 401 {
                return resp;
            }
            let challenge = resp.www_authenticate_header().expect("a challenge");
            let c = WwwAuthenticate::parse(challenge.value()).expect("a digest challenge");
            let uri_parsed = Uri::try_from(uri).expect("uri");
            let qop = AuthQop::Auth {
                cnonce: "probe".into(),
                nc: 1,
            };
            let response = DigestGenerator {
                username: "alice",
                password: PASSWORD,
                nonce: &c.nonce,
                uri: &uri_parsed,
                realm: &c.realm,
                method: &method,
                qop: Some(&qop),
                algorithm: Algorithm::Md5,
            }
            .compute();
            auth = format!(
                "Authorization: Digest username=\"alice\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"probe\"\r\n",
                c.realm, c.nonce
            );
        }
        panic!("challenged twice")
    }

    /// The next request the server sends (answered 200), queued ones first.
    pub async fn next_request(&mut self, timeout: Duration) -> Request {
        if !self.queued.is_empty() {
            return self.queued.remove(0);
        }
        loop {
            if let SipMessage::Request(r) = self.receive(timeout).await {
                self.ok(&r).await;
                return r;
            }
        }
    }

    /// ACKs a 2xx to INVITE.
    pub async fn ack(&self, uri: &str, to: &str) {
        let text = format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{b}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@{srv}>;tag=probe\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            me = self.me(),
            b = rand::random::<u64>(),
            srv = self.server,
            cid = self.call_id,
            cseq = self.cseq,
        );
        self.socket
            .send_to(text.as_bytes(), self.server)
            .await
            .expect("send");
    }

    /// Calls `uri` offering PCMU at `rtp`, expects 200 and ACKs it;
    /// returns the 200.
    pub async fn call(&mut self, uri: &str, rtp: SocketAddr) -> Response {
        let ok = self
            .request(
                Method::Invite,
                uri,
                "Content-Type: application/sdp\r\n",
                &Self::offer(rtp),
            )
            .await;
        assert_eq!(u16::from(ok.status_code.clone()), 200, "{ok}");
        self.ack(uri, &Self::to(&ok)).await;
        ok
    }

    /// Sends `pcm` from `rtp` to `media` as PCMU in real time (20 ms
    /// packets); returns the payload bytes sent.
    pub async fn talk(rtp: &UdpSocket, media: SocketAddr, pcm: &[i16]) -> Vec<u8> {
        let encoded = audio::Codec::Pcmu.encode(pcm);
        for (i, f) in encoded.chunks(audio::FRAME).enumerate() {
            let packet = rtp_rs::RtpPacketBuilder::new()
                .payload_type(0)
                .ssrc(5)
                .sequence(rtp_rs::Seq::from(i as u16))
                .timestamp((i * audio::FRAME) as u32)
                .payload(f)
                .build()
                .expect("a G.711 frame fits a packet");
            rtp.send_to(&packet, media).await.expect("send");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        encoded
    }

    /// An SDP offer of PCMU and telephone events at `rtp`.
    pub fn offer(rtp: SocketAddr) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
            rtp.port()
        )
    }

    /// The To header (with the server's tag) of a response.
    pub fn to(resp: &Response) -> String {
        resp.to_header().expect("To").value().to_owned()
    }
}
