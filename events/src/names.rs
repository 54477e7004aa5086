//! Validated names, checked once at the edge (the api) and trusted everywhere after.
//!
//! Every name that becomes part of a Kubernetes object name, a NATS subject token or a KV key
//! is one of these newtypes; a `String` that has not been validated cannot reach those places.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, de};

/// Why a value was refused: the field it was given for, and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    /// The JSON field (or path segment) that carried the value, e.g. `name` or `spec.timeout`.
    pub field: String,
    /// A human sentence naming the rule, e.g. "must be at most 63 characters".
    pub rule: String,
}

impl ValidationError {
    /// A validation error for `field` breaking `rule`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self { field: field.into(), rule: rule.into() }
    }

    /// The same error, reported for another field (e.g. when a name is nested in a body).
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}

/// Checks the DNS-1123 label rule (RFC 1123): 1..=`max` characters of `[a-z0-9-]`, starting and
/// ending with an alphanumeric character.
pub fn check_dns1123_label(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    let err = |rule: String| Err(ValidationError::new(field, rule));
    if value.is_empty() {
        return err("must not be empty".into());
    }
    if value.len() > max {
        return err(format!("must be at most {max} characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return err("must consist of lower-case letters, digits and '-' (DNS-1123 label)".into());
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(value.as_bytes()[0]) || !alnum(value.as_bytes()[value.len() - 1]) {
        return err("must start and end with a letter or digit (DNS-1123 label)".into());
    }
    Ok(())
}

macro_rules! dns_label_name {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, max = $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The longest value accepted.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check_dns1123_label($field, &value, Self::MAX_LEN)?;
                Ok(Self(value))
            }

            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": $max,
                    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
                })
            }
        }
    };
}

dns_label_name!(
    /// A project: the name of its Kubernetes namespace (DNS-1123 label, at most 63 characters).
    ProjectName, field = "project", max = 63
);

dns_label_name!(
    /// An agentic session: the name of its `AgenticSession` object. At most 58 characters, so
    /// that the derived Job name `<session>-job` stays a valid 63-character label.
    SessionName, field = "session", max = 58
);

dns_label_name!(
    /// An access key's name as the user chose it. At most 40 characters: it becomes part of the
    /// key's ServiceAccount name `ambient-key-<name>`.
    KeyName, field = "name", max = 40
);

impl ProjectName {
    /// Namespace names no tenant may take: the cluster's own (`default`, `kube-*`) and
    /// OpenShift's (`openshift`, `openshift-*`), where a project would sit beside system
    /// workloads, and whose existence a create must not probe (it is refused before any lookup).
    pub fn check_creatable(&self) -> Result<(), ValidationError> {
        let n = self.0.as_str();
        let reserved = matches!(n, "default" | "openshift") || n.starts_with("kube-") || n.starts_with("openshift-");
        if reserved {
            return Err(ValidationError::new(
                "project",
                "is reserved for the cluster (default, kube-*, openshift, openshift-*)",
            ));
        }
        Ok(())
    }
}

/// Characters that render as nothing or reorder the text around them (Unicode general category
/// Cf: zero-width spaces and joiners, bidi embeddings, overrides and isolates, the BOM, tag
/// characters), and private-use or non-characters: a name holding one can look like another
/// name (`alice\u{202E}` or `ali\u{200B}ce` shown as `alice`).
pub fn is_deceptive_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xFDD0..=0xFDEF | 0xFFFE | 0xFFFF)
}

/// A user or group name in a permission grant. Kubernetes accepts almost any string here (e.g.
/// `alice@example.com`, `system:serviceaccount:ns:sa`); we refuse what cannot be a real identity
/// or would be unsafe in a URL path or a label value derived from it: empty, over 253 bytes,
/// control characters, whitespace, `/`, or characters that hide or reorder text
/// ([`is_deceptive_char`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SubjectName(#[schemars(length(min = 1, max = 253))] String);

impl SubjectName {
    /// The longest value accepted, in bytes.
    pub const MAX_LEN: usize = 253;

    /// Validates `value` and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let err = |rule: &str| Err(ValidationError::new("subjectName", rule));
        if value.is_empty() {
            return err("must not be empty");
        }
        if value.len() > Self::MAX_LEN {
            return err("must be at most 253 bytes");
        }
        if value.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/') {
            return err("must not contain whitespace, control characters or '/'");
        }
        if value.chars().any(is_deceptive_char) {
            return err("must not contain invisible, bidirectional-control or private-use characters");
        }
        Ok(Self(value))
    }

    /// The validated name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A DNS-1123-safe rendering for object names: lower-case, every run of other characters
    /// becomes `-`, trimmed to `max`, followed by a short hash of the exact name so that two
    /// subjects that sanitize alike (`Alice` and `alice`) never share an object.
    pub fn object_suffix(&self, max: usize) -> String {
        use sha2::{Digest, Sha256};
        let mut s = String::with_capacity(self.0.len());
        for c in self.0.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                s.push(c);
            } else if !s.ends_with('-') {
                s.push('-');
            }
        }
        let hash = Sha256::digest(self.0.as_bytes());
        let tag: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let keep = max.saturating_sub(tag.len() + 1);
        let head: String = s.trim_matches('-').chars().take(keep).collect();
        let head = head.trim_end_matches('-');
        if head.is_empty() { tag } else { format!("{head}-{tag}") }
    }
}

impl fmt::Display for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SubjectName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(ProjectName::new("team-a").is_ok());
        assert!(ProjectName::new("a").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ä", &"x".repeat(64)] {
            let e = ProjectName::new(bad).unwrap_err();
            assert_eq!(e.field, "project", "{bad}");
        }
        assert!(SessionName::new("x".repeat(58)).is_ok());
        assert!(SessionName::new("x".repeat(59)).is_err());
    }

    #[test]
    fn reserved_project_names() {
        for n in ["default", "kube-system", "kube-public", "kube-node-lease", "openshift", "openshift-config"] {
            assert!(ProjectName::new(n).unwrap().check_creatable().is_err(), "{n}");
        }
        for n in ["team-a", "kube", "kubex", "defaults", "my-openshift-x"] {
            assert!(ProjectName::new(n).unwrap().check_creatable().is_ok(), "{n}");
        }
    }

    #[test]
    fn deserialize_validates() {
        let e = serde_json::from_str::<ProjectName>("\"Bad Name\"").unwrap_err();
        assert!(e.to_string().contains("DNS-1123"), "{e}");
        let ok: ProjectName = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(ok.as_str(), "good");
    }

    #[test]
    fn subject_names() {
        assert!(SubjectName::new("alice@example.com").is_ok());
        assert!(SubjectName::new("system:serviceaccount:a:b").is_ok());
        for bad in [
            "",
            "a b",
            "a/b",
            "a\nb",
            &"x".repeat(254),
            "alice\u{202E}",
            "ali\u{200B}ce",
            "\u{FEFF}bob",
            "bob\u{2066}",
            "x\u{E0041}",
            "\u{E000}",
        ] {
            assert!(SubjectName::new(bad).is_err(), "{bad:?}");
        }
        for good in ["josé@example.com", "Zoë", "用户", "team:a.b_c"] {
            assert!(SubjectName::new(good).is_ok(), "{good:?}");
        }
        let a = SubjectName::new("Alice").unwrap().object_suffix(30);
        let b = SubjectName::new("alice").unwrap().object_suffix(30);
        assert_ne!(a, b);
        assert!(a.len() <= 30);
        check_dns1123_label("x", &a, 63).unwrap();
        let s = SubjectName::new("@@@").unwrap().object_suffix(30);
        check_dns1123_label("x", &s, 63).unwrap();
        let long = SubjectName::new("x".repeat(200)).unwrap().object_suffix(40);
        assert!(long.len() <= 40);
        check_dns1123_label("x", &long, 63).unwrap();
    }
}
