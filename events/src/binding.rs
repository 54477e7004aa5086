//! CloudEvents over NATS in binary mode (the CloudEvents NATS protocol binding, v1.0.3).
//!
//! Every attribute and extension is a `ce-<name>` header (written lower-case, read
//! case-insensitively), its value percent-encoded; the data is the message body. The event id
//! is also sent as `Nats-Msg-Id`, so JetStream drops a re-published event inside its
//! de-duplication window. Decoding also accepts structured mode
//! (`Content-Type: application/cloudevents+json`).
//!
//! Built on cloudevents-sdk's `Event` model; the SDK's own NATS feature targets an old client
//! and structured mode only, so it is not used.

use async_nats::HeaderMap;
use bytes::Bytes;
use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Header prefix of CloudEvent attributes.
pub const HEADER_PREFIX: &str = "ce-";
/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Content type of structured-mode events.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

// Space, `"`, `%` and everything outside printable ASCII is escaped; non-ASCII is always
// escaped by percent_encoding.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// A NATS message could not be read as a CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// A `ce-` header value is not valid percent-encoded UTF-8.
    #[error("header {0} is not valid percent-encoded UTF-8")]
    HeaderEncoding(String),
    /// Required attributes are missing or invalid.
    #[error("not a valid CloudEvent: {0}")]
    Event(String),
    /// Structured-mode body is not a CloudEvent JSON document.
    #[error("structured event is not valid JSON: {0}")]
    Structured(String),
}

/// Percent-encodes a header value.
pub fn encode_header_value(v: &str) -> String {
    utf8_percent_encode(v, HEADER_VALUE).to_string()
}

/// Undoes RFC 7230 quoting, then percent-decoding; refuses invalid UTF-8.
pub fn decode_header_value(name: &str, v: &str) -> Result<String, BindingError> {
    let unquoted = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(|s| s.replace("\\\"", "\"").replace("\\\\", "\\"))
        .unwrap_or_else(|| v.to_string());
    percent_decode_str(&unquoted)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| BindingError::HeaderEncoding(name.to_string()))
}

/// The event's data as bytes (JSON is serialized compactly).
pub fn data_bytes(event: &Event) -> Vec<u8> {
    match event.data() {
        None => Vec::new(),
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::String(s)) => s.clone().into_bytes(),
        Some(Data::Json(v)) => serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// Encodes an event in binary mode: `ce-*` headers plus `Nats-Msg-Id`, data as the body.
pub fn to_nats(event: &Event) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    for (name, value) in event.iter() {
        headers.insert(format!("{HEADER_PREFIX}{name}").as_str(), encode_header_value(&value.to_string()).as_str());
    }
    headers.insert(MSG_ID_HEADER, event.id());
    (headers, Bytes::from(data_bytes(event)))
}

/// The same attributes as HTTP headers (`ce-*`, `content-type`), for HTTP sinks (binary mode
/// of the CloudEvents HTTP binding).
pub fn to_http_headers(event: &Event) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in event.iter() {
        if name == "datacontenttype" {
            out.push(("content-type".to_string(), value.to_string()));
        } else {
            out.push((format!("{HEADER_PREFIX}{name}"), encode_header_value(&value.to_string())));
        }
    }
    out
}

/// Whether a message is in structured mode (the whole event, data included, as one JSON
/// document) rather than binary mode (attributes in headers, data as the body).
pub fn is_structured(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| {
        h.iter().any(|(name, values)| {
            AsRef::<str>::as_ref(name).eq_ignore_ascii_case("content-type")
                && values
                    .first()
                    .is_some_and(|v| v.as_str().to_ascii_lowercase().starts_with("application/cloudevents"))
        })
    })
}

/// Decodes a NATS message in binary or structured mode.
pub fn from_nats(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Event, BindingError> {
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut content_type = None;
    for (name, values) in headers.iter() {
        let lname = AsRef::<str>::as_ref(name).to_ascii_lowercase();
        let Some(value) = values.first() else { continue };
        if lname == "content-type" {
            content_type = Some(value.as_str().to_string());
        } else if let Some(attr) = lname.strip_prefix(HEADER_PREFIX) {
            attrs.push((attr.to_string(), decode_header_value(&lname, value.as_str())?));
        }
    }
    if is_structured(Some(headers)) {
        return serde_json::from_slice::<Event>(payload).map_err(|e| BindingError::Structured(e.to_string()));
    }
    from_attributes(attrs, content_type, payload)
}

/// Builds an event from decoded `ce-` attributes (names without prefix) and a body.
pub fn from_attributes(
    attrs: Vec<(String, String)>,
    content_type: Option<String>,
    payload: &[u8],
) -> Result<Event, BindingError> {
    let mut b = EventBuilderV10::new();
    let mut datacontenttype = content_type;
    let mut spec_ok = false;
    for (name, value) in attrs {
        b = match name.as_str() {
            "specversion" => {
                if value != "1.0" {
                    return Err(BindingError::Event(format!("unsupported specversion {value}")));
                }
                spec_ok = true;
                b
            }
            "id" => b.id(value),
            "type" => b.ty(value),
            "source" => b.source(value),
            "subject" => b.subject(value),
            "time" => b.time(value),
            "datacontenttype" => {
                datacontenttype = Some(value);
                b
            }
            "dataschema" => b,
            _ => b.extension(&name, ExtensionValue::String(value)),
        };
    }
    if !spec_ok {
        return Err(BindingError::Event("missing ce-specversion".into()));
    }
    if !payload.is_empty() {
        let ct = datacontenttype.unwrap_or_else(|| "application/json".into());
        let data = if ct.starts_with("application/json") || ct.ends_with("+json") {
            serde_json::from_slice::<serde_json::Value>(payload)
                .map(Data::Json)
                .map_err(|e| BindingError::Event(format!("data is not JSON: {e}")))?
        } else {
            Data::Binary(payload.to_vec())
        };
        b = b.data(ct, data);
    }
    b.build().map_err(|e| BindingError::Event(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip() {
        for v in ["plain", "with space", "100%", "ünïcødé ✓", "", "\"quoted\"", "a\tb"] {
            let enc = encode_header_value(v);
            assert!(enc.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'), "{enc}");
            assert_eq!(decode_header_value("x", &enc).unwrap(), v);
        }
        assert!(decode_header_value("x", "%ff").is_err());
        assert_eq!(decode_header_value("x", "\"a%20b\"").unwrap(), "a b");
    }

    #[test]
    fn event_round_trip() {
        let ev = EventBuilderV10::new()
            .id("id-1")
            .ty("ambient.test.v1")
            .source("/ambient/test")
            .subject("session/x y")
            .time("2026-11-28T10:00:00Z")
            .extension("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .data("application/json", serde_json::json!({"a": "ü%"}))
            .build()
            .unwrap();
        let (h, body) = to_nats(&ev);
        assert_eq!(h.get(MSG_ID_HEADER).map(|v| v.as_str()), Some("id-1"));
        assert!(h.get("ce-subject").is_some());
        let back = from_nats(Some(&h), &body).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn headers_are_case_insensitive_and_structured_accepted() {
        let mut h = HeaderMap::new();
        h.insert("CE-SpecVersion", "1.0");
        h.insert("Ce-Id", "x");
        h.insert("ce-type", "t");
        h.insert("ce-source", "/s");
        let ev = from_nats(Some(&h), b"").unwrap();
        assert_eq!(ev.id(), "x");

        let structured = serde_json::to_vec(&ev).unwrap();
        let mut h = HeaderMap::new();
        h.insert("Content-Type", STRUCTURED_CONTENT_TYPE);
        assert_eq!(from_nats(Some(&h), &structured).unwrap(), ev);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(from_nats(None, b"\xff\xfe").is_err());
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "0.1");
        assert!(from_nats(Some(&h), b"").is_err());
    }
}
