//! The SDP offer and answer of a call (RFC 3264): pick G.711 (PCMU or PCMA,
//! in the caller's order of preference) and RFC 4733 telephone events, and
//! answer with this service's RTP address. Offers are parsed by
//! `webrtc-sdp`. Pure.

use std::net::{IpAddr, SocketAddr};

use webrtc_sdp::address::ExplicitlyTypedAddress;
use webrtc_sdp::attribute_type::{SdpAttribute, SdpAttributeType};
use webrtc_sdp::media_type::{SdpFormatList, SdpMediaValue};

use super::audio::Codec;

/// The MIME type of SDP.
pub const CONTENT_TYPE: &str = "application/sdp";
/// Largest SDP body taken, bytes.
pub const MAX_SDP: usize = 4096;

/// What the caller offered that this service can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Where the caller wants its RTP.
    pub remote: SocketAddr,
    /// The chosen codec.
    pub codec: Codec,
    /// Its payload type in the offer (0 or 8, or a dynamic one mapped to
    /// PCMU/8000 or PCMA/8000): the answer and both directions use it.
    pub payload_type: u8,
    /// The payload type of `telephone-event/8000`, if offered.
    pub dtmf: Option<u8>,
}

/// Why an offer cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not SDP, or SDP without what a call needs.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No audio stream offers PCMU or PCMA.
    #[error("no common codec: this service speaks G.711 only (PCMU 0, PCMA 8)")]
    NoCommonCodec,
}

/// Reads an offer.
pub fn parse_offer(body: &[u8]) -> Result<Offer, SdpError> {
    let bad = |s: &str| SdpError::Malformed(s.to_owned());
    if body.len() > MAX_SDP {
        return Err(bad("larger than 4 KiB"));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    let session =
        webrtc_sdp::parse_sdp(text, false).map_err(|e| SdpError::Malformed(e.to_string()))?;
    let audio = session
        .media
        .iter()
        .filter(|m| *m.get_type() == SdpMediaValue::Audio && m.get_port() != 0);
    let mut seen_audio = false;
    for m in audio {
        seen_audio = true;
        let SdpFormatList::Integers(formats) = m.get_formats() else {
            continue;
        };
        let rtpmap = |pt: u32| {
            m.get_attributes_of_type(SdpAttributeType::Rtpmap)
                .into_iter()
                .find_map(|a| match a {
                    SdpAttribute::Rtpmap(r) if u32::from(r.payload_type) == pt => Some(r),
                    _ => None,
                })
        };
        let codec = formats.iter().find_map(|&pt| {
            let codec = match (pt, rtpmap(pt)) {
                (_, Some(r)) if r.frequency == 8000 => {
                    match r.codec_name.to_ascii_uppercase().as_str() {
                        "PCMU" => Some(Codec::Pcmu),
                        "PCMA" => Some(Codec::Pcma),
                        _ => None,
                    }
                }
                (_, Some(_)) => None,
                (pt, None) => u8::try_from(pt).ok().and_then(Codec::from_payload_type),
            };
            codec.map(|c| (c, pt as u8))
        });
        let Some((codec, payload_type)) = codec else {
            continue;
        };
        let dtmf = formats.iter().find_map(|&pt| {
            rtpmap(pt)
                .filter(|r| {
                    r.codec_name.eq_ignore_ascii_case("telephone-event") && r.frequency == 8000
                })
                .map(|r| r.payload_type)
        });
        let connection = m
            .get_connection()
            .as_ref()
            .or(session.connection.as_ref())
            .ok_or_else(|| bad("no c= line"))?;
        let ip = match &connection.address {
            ExplicitlyTypedAddress::Ip(ip) => *ip,
            ExplicitlyTypedAddress::Fqdn { .. } => {
                return Err(bad("c= names a host, not an address"));
            }
        };
        let port = u16::try_from(m.get_port()).map_err(|_| bad("port out of range"))?;
        return Ok(Offer {
            remote: SocketAddr::new(ip, port),
            codec,
            payload_type,
            dtmf,
        });
    }
    if seen_audio {
        Err(SdpError::NoCommonCodec)
    } else {
        Err(bad("no audio stream"))
    }
}

/// The answer to `offer`, with this service's RTP at `local`.
pub fn answer(offer: &Offer, local: SocketAddr, session_id: u64) -> String {
    let family = |ip: IpAddr| if ip.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.ip();
    let pt = offer.payload_type;
    let mut formats = pt.to_string();
    let mut lines = format!("a=rtpmap:{pt} {}/8000\r\n", offer.codec.name());
    if let Some(d) = offer.dtmf {
        formats.push_str(&format!(" {d}"));
        lines.push_str(&format!(
            "a=rtpmap:{d} telephone-event/8000\r\na=fmtp:{d} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\no=vmail {session_id} {session_id} IN {f} {ip}\r\ns=vmail\r\nc=IN {f} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {formats}\r\n{lines}a=ptime:20\r\na=sendrecv\r\n",
        f = family(ip),
        port = local.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

    #[test]
    fn the_callers_first_g711_wins_and_dtmf_is_kept() {
        let o = parse_offer(OFFER.as_bytes()).unwrap();
        assert_eq!(o.codec, Codec::Pcma);
        assert_eq!(o.dtmf, Some(101));
        assert_eq!(o.remote, "127.0.0.1:6000".parse().unwrap());
        let a = answer(&o, "127.0.0.1:7000".parse().unwrap(), 9);
        assert!(a.contains("m=audio 7000 RTP/AVP 8 101\r\n"), "{a}");
        // The answer is itself valid SDP that offers what it chose.
        let back = parse_offer(a.as_bytes()).unwrap();
        assert_eq!((back.codec, back.dtmf), (Codec::Pcma, Some(101)));
    }

    #[test]
    fn a_dynamic_payload_type_for_g711_is_answered_as_offered() {
        let dynamic = OFFER.replace("RTP/AVP 8 0 101", "RTP/AVP 96 101").replace(
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n",
            "a=rtpmap:96 PCMU/8000\r\n",
        );
        let o = parse_offer(dynamic.as_bytes()).unwrap();
        assert_eq!((o.codec, o.payload_type), (Codec::Pcmu, 96));
        let a = answer(&o, "127.0.0.1:7000".parse().unwrap(), 9);
        assert!(
            a.contains("m=audio 7000 RTP/AVP 96 101\r\na=rtpmap:96 PCMU/8000\r\n"),
            "{a}"
        );
        // A static number mapped to something else is not G.711.
        let remapped = OFFER
            .replace("RTP/AVP 8 0 101", "RTP/AVP 0")
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 opus/48000");
        assert_eq!(
            parse_offer(remapped.as_bytes()),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn an_offer_without_g711_or_audio_is_refused() {
        let g729 = OFFER
            .replace("RTP/AVP 8 0 101", "RTP/AVP 18")
            .replace("a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n", "");
        assert_eq!(parse_offer(g729.as_bytes()), Err(SdpError::NoCommonCodec));
        assert!(matches!(parse_offer(b"hello"), Err(SdpError::Malformed(_))));
        let video = OFFER.replace("m=audio", "m=video");
        assert!(matches!(
            parse_offer(video.as_bytes()),
            Err(SdpError::Malformed(_))
        ));
    }
}
