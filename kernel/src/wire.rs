//! The Jupyter wire protocol: multipart ZeroMQ messages, HMAC-SHA256 signatures,
//! replay protection. Messages stay JSON values here, so that a malformed or forged
//! message is an error to log, never a crash or a stuck socket.
//!
//! Frames: `identities… <IDS|MSG> signature header parent_header metadata content buffers…`,
//! signature = hex(HMAC-SHA256(key, header ‖ parent_header ‖ metadata ‖ content)).

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use serde_json::{json, Value};

const DELIMITER: &[u8] = b"<IDS|MSG>";
/// How many recent signatures are remembered to refuse replays.
const REMEMBERED_SIGNATURES: usize = 8192;

/// One message, parsed.
#[derive(Debug, Clone)]
pub struct Message {
    /// ZeroMQ routing identities (who to reply to on ROUTER sockets; the topic on IOPub).
    pub identities: Vec<Bytes>,
    /// The header.
    pub header: Value,
    /// The header of the message this one answers.
    pub parent_header: Value,
    /// Metadata.
    pub metadata: Value,
    /// Content.
    pub content: Value,
    /// Binary buffers after the content (widgets' images).
    pub buffers: Vec<Bytes>,
}

impl Message {
    /// The message's type, `""` when the header has none.
    pub fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or("")
    }

    /// A new message of `msg_type` answering the request whose header is `parent`.
    pub fn new(msg_type: &str, parent: &Value, content: Value, session: &str, identities: Vec<Bytes>) -> Message {
        let header = json!({
            "msg_id": uuid::Uuid::new_v4().to_string(),
            "session": session,
            "username": "tchlab",
            "date": iso8601_now(),
            "msg_type": msg_type,
            "version": "5.3",
        });
        Message { identities, header, parent_header: parent.clone(), metadata: json!({}), content, buffers: vec![] }
    }

    /// The reply to `self` on the same socket.
    pub fn reply(&self, msg_type: &str, content: Value, session: &str) -> Message {
        Message::new(msg_type, &self.header, content, session, self.identities.clone())
    }
}

/// Why an incoming message was dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// No `<IDS|MSG>` delimiter, or too few frames.
    Malformed(&'static str),
    /// The signature is missing or wrong.
    BadSignature,
    /// This exact signature was seen before.
    Replayed,
    /// A frame is not JSON.
    NotJson(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Malformed(why) => write!(f, "malformed message: {why}"),
            WireError::BadSignature => write!(f, "missing or invalid signature"),
            WireError::Replayed => write!(f, "replayed message (its signature was seen before)"),
            WireError::NotJson(part) => write!(f, "the {part} frame is not JSON"),
        }
    }
}

/// Signs outgoing messages and checks incoming ones with the connection's key.
pub struct Signer {
    key: Option<ring::hmac::Key>,
    seen: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Signer {
    /// A signer for `key`; an empty key turns signing off, as the protocol says.
    pub fn new(key: &str) -> Signer {
        let key = (!key.is_empty()).then(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()));
        Signer { key, seen: HashSet::new(), order: VecDeque::new() }
    }

    fn signature(&self, parts: &[&[u8]]) -> String {
        let Some(key) = &self.key else { return String::new() };
        let mut context = ring::hmac::Context::with_key(key);
        for p in parts {
            context.update(p);
        }
        context.sign().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks and parses a multipart message.
    pub fn parse(&mut self, frames: Vec<Bytes>) -> Result<Message, WireError> {
        let delimiter = frames.iter().position(|f| f.as_ref() == DELIMITER).ok_or(WireError::Malformed("no <IDS|MSG> delimiter"))?;
        let parts = &frames[delimiter + 1..];
        if parts.len() < 5 {
            return Err(WireError::Malformed("fewer than five frames after the delimiter"));
        }
        let (signature, body) = (&parts[0], &parts[1..5]);
        if let Some(key) = &self.key {
            let tag = decode_hex(signature).ok_or(WireError::BadSignature)?;
            let data: Vec<u8> = body.iter().flat_map(|b| b.iter().copied()).collect();
            // ring compares in constant time.
            ring::hmac::verify(key, &data, &tag).map_err(|_| WireError::BadSignature)?;
            // Keyed on the decoded bytes: one signature has exactly one accepted spelling.
            if !self.seen.insert(tag.clone()) {
                return Err(WireError::Replayed);
            }
            self.order.push_back(tag);
            if self.order.len() > REMEMBERED_SIGNATURES {
                let old = self.order.pop_front().expect("not empty");
                self.seen.remove(&old);
            }
        }
        let json = |b: &Bytes, part| serde_json::from_slice::<Value>(b).map_err(|_| WireError::NotJson(part));
        let header = json(&body[0], "header")?;
        if !header.is_object() || !header["msg_type"].is_string() {
            return Err(WireError::Malformed("the header has no msg_type"));
        }
        Ok(Message {
            identities: frames[..delimiter].to_vec(),
            header,
            parent_header: json(&body[1], "parent_header")?,
            metadata: json(&body[2], "metadata")?,
            content: json(&body[3], "content")?,
            buffers: parts[5..].to_vec(),
        })
    }

    /// The frames of `message`, signed.
    pub fn frames(&self, message: &Message) -> Vec<Bytes> {
        let body: Vec<Vec<u8>> =
            [&message.header, &message.parent_header, &message.metadata, &message.content].iter().map(|v| serde_json::to_vec(v).expect("JSON")).collect();
        let signature = self.signature(&body.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let mut frames = message.identities.clone();
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(signature));
        frames.extend(body.into_iter().map(Bytes::from));
        frames.extend(message.buffers.iter().cloned());
        frames
    }
}

/// An HMAC-SHA256 signature as Jupyter writes it: exactly 64 lowercase hex digits
/// (`hmac.hexdigest()`); any other spelling is refused, so that no message has two
/// accepted signatures.
fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    const SIGNATURE_HEX_LEN: usize = 64;
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if text.len() != SIGNATURE_HEX_LEN {
        return None;
    }
    text.chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// The current UTC time as ISO 8601 with microseconds, as Jupyter writes dates.
fn iso8601_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (now.as_secs() as i64, now.subsec_micros());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(signer: &Signer) -> Vec<Bytes> {
        let m = Message::new("kernel_info_request", &json!({}), json!({}), "s", vec![Bytes::from_static(b"client")]);
        signer.frames(&m)
    }

    #[test]
    fn signed_messages_round_trip_and_replays_are_refused() {
        let mut signer = Signer::new("secret");
        let frames = sample(&signer);
        let m = signer.parse(frames.clone()).unwrap();
        assert_eq!(m.msg_type(), "kernel_info_request");
        assert_eq!(m.identities, vec![Bytes::from_static(b"client")]);
        assert_eq!(signer.parse(frames).unwrap_err(), WireError::Replayed);
    }

    #[test]
    fn forged_and_malformed_messages_are_errors() {
        let mut signer = Signer::new("secret");
        let mut forged = sample(&Signer::new("another key"));
        assert_eq!(signer.parse(forged.clone()).unwrap_err(), WireError::BadSignature);
        forged[2] = Bytes::from_static(b"");
        assert_eq!(signer.parse(forged).unwrap_err(), WireError::BadSignature);
        assert!(matches!(signer.parse(vec![Bytes::from_static(b"x")]), Err(WireError::Malformed(_))));
        let mut bad_json = sample(&signer);
        bad_json[3] = Bytes::from_static(b"{not json");
        assert_eq!(signer.parse(bad_json).unwrap_err(), WireError::BadSignature, "the signature covers the header");
    }

    #[test]
    fn a_signature_respelt_in_upper_case_is_neither_new_nor_valid() {
        let mut signer = Signer::new("secret");
        let frames = sample(&signer);
        let delimiter = frames.iter().position(|f| f.as_ref() == DELIMITER).unwrap();
        let mut upper = frames.clone();
        upper[delimiter + 1] = Bytes::from(frames[delimiter + 1].to_ascii_uppercase());
        assert_eq!(signer.parse(upper.clone()).unwrap_err(), WireError::BadSignature, "upper-case hex is not Jupyter's spelling");
        signer.parse(frames).unwrap();
        assert_eq!(signer.parse(upper).unwrap_err(), WireError::BadSignature);
        assert_eq!(decode_hex(b"ab"), None, "a signature has 64 digits");
        assert_eq!(decode_hex(&[b'0'; 64]), Some(vec![0; 32]));
        assert_eq!(decode_hex(&[b'+'; 64]), None, "u8::from_str_radix would take a sign");
    }

    #[test]
    fn dates_are_iso8601() {
        let d = iso8601_now();
        assert_eq!(d.len(), 27, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z') && &d[10..11] == "T");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_frames_are_a_message_or_an_error(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..9), delimit in any::<bool>()) {
            let mut frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            if delimit && !frames.is_empty() {
                frames[0] = Bytes::from_static(DELIMITER);
            }
            let _ = Signer::new("secret").parse(frames.clone());
            let _ = Signer::new("").parse(frames);
        }

        #[test]
        fn a_signed_message_with_any_body_changed_is_refused(at in 0usize..4, byte in any::<u8>(), offset in 0usize..64) {
            let mut signer = Signer::new("secret");
            let m = Message::new("execute_request", &json!({}), json!({ "code": "%step" }), "s", vec![]);
            let mut frames = signer.frames(&m);
            let delimiter = frames.iter().position(|f| f.as_ref() == DELIMITER).unwrap();
            let part = delimiter + 2 + at;
            let mut body = frames[part].to_vec();
            let offset = offset % body.len();
            prop_assume!(body[offset] != byte);
            body[offset] = byte;
            frames[part] = Bytes::from(body);
            prop_assert!(signer.parse(frames).is_err());
        }
    }
}
