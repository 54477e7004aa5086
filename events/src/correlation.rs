//! Labels and annotations a user gives a session at create, so that a bridge can correlate it
//! with something outside (e.g. `jira-issue: ABC-123`). They are validated like Kubernetes
//! metadata, stay outside the prefixes the platform and Kubernetes reserve, are stored on the
//! AgenticSession and appear in every status event of it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::ValidationError;

/// At most this many labels, and as many annotations.
pub const MAX_ENTRIES: usize = 32;
/// Longest annotation value, in bytes.
pub const MAX_ANNOTATION_VALUE: usize = 1024;
/// All keys and values together, in bytes of JSON. They travel in every status event of the session,
/// and the status stream is shared: one tenant's bulk must not push out the others' history.
pub const MAX_TOTAL_BYTES: usize = 8 * 1024;

/// A key as a pattern (the reserved prefixes aside): an optional DNS-subdomain prefix and `/`,
/// then a name.
pub const KEY_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value as a pattern.
pub const LABEL_VALUE_PATTERN: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

/// Key prefixes no user may set: the platform's own and those Kubernetes reserves. A prefix
/// also covers its subdomains (`x.kubernetes.io/…`).
pub const RESERVED_PREFIXES: &[&str] =
    &["ambient-code.io", "vteam.ambient-code", "kubernetes.io", "k8s.io", "openshift.io", "kwok.x-k8s.io"];

/// A session's user labels and annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    /// Labels, e.g. `{"jira-issue": "ABC-123"}`: Kubernetes label syntax, at most 32.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_ENTRIES, "propertyNames" = {"maxLength": 317, "pattern": KEY_PATTERN}, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}))]
    pub labels: BTreeMap<String, String>,
    /// Annotations: Kubernetes key syntax, values up to 1024 bytes, at most 32; with the labels
    /// at most 8 KiB in all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_ENTRIES, "propertyNames" = {"maxLength": 317, "pattern": KEY_PATTERN}, "additionalProperties" = {"type": "string", "maxLength": MAX_ANNOTATION_VALUE}))]
    pub annotations: BTreeMap<String, String>,
}

impl Correlation {
    /// Checks every key and value; the error names the field, e.g. `labels.jira-issue`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let total: usize =
            self.labels.iter().chain(&self.annotations).map(|(k, v)| encoded_len(k) + encoded_len(v)).sum();
        if total > MAX_TOTAL_BYTES {
            return Err(ValidationError::new(
                "annotations",
                format!("labels and annotations must be at most {MAX_TOTAL_BYTES} bytes in all"),
            ));
        }
        for (what, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if map.len() > MAX_ENTRIES {
                return Err(ValidationError::new(what, format!("must have at most {MAX_ENTRIES} entries")));
            }
            for (k, v) in map {
                let field = format!("{what}.{k}");
                check_key(k).map_err(|rule| ValidationError::new(&field, rule))?;
                let value = if what == "labels" { check_label_value(v) } else { check_annotation_value(v) };
                value.map_err(|rule| ValidationError::new(&field, rule))?;
            }
        }
        Ok(())
    }

    /// The user's entries among an object's labels and annotations, as status events show
    /// them and a clone copies them: the valid entries outside the reserved prefixes, in key
    /// order, within the same bounds as a create. A tenant may edit the object directly
    /// (`kubectl label`); what it adds past the bounds never reaches the shared status stream.
    pub fn of(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> Self {
        let mut out = Correlation::default();
        let mut total = 0;
        let entries = labels.iter().map(|e| (true, e)).chain(annotations.iter().map(|e| (false, e)));
        for (is_label, (k, v)) in entries {
            let value_ok = if is_label { check_label_value(v) } else { check_annotation_value(v) };
            let map = if is_label { &mut out.labels } else { &mut out.annotations };
            if check_key(k).is_err() || value_ok.is_err() || map.len() >= MAX_ENTRIES {
                continue;
            }
            let size = encoded_len(k) + encoded_len(v);
            if total + size > MAX_TOTAL_BYTES {
                continue;
            }
            total += size;
            map.insert(k.clone(), v.clone());
        }
        out
    }

    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// Bytes of `s` as a JSON string, quotes included (a control character takes six).
fn encoded_len(s: &str) -> usize {
    serde_json::to_string(s).map(|j| j.len()).unwrap_or(usize::MAX / 4)
}

/// Whether `key` is under a reserved prefix (or is a platform label without a prefix).
pub fn reserved(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, _)) => RESERVED_PREFIXES.iter().any(|r| prefix == *r || prefix.ends_with(&format!(".{r}"))),
        // The runner pods' session label and the `app` label of the platform's objects.
        None => key == crate::labels::SESSION_LABEL || key == crate::labels::APP,
    }
}

/// A label name: 1..=63 characters, alphanumeric at both ends, `-_.` inside.
fn is_name(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| ok(b) || b == b'-' || b == b'_' || b == b'.')
        && ok(s.as_bytes()[0])
        && ok(s.as_bytes()[s.len() - 1])
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated labels of `[a-z0-9-]`.
fn is_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn check_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && !is_subdomain(p)
    {
        return Err("the key's prefix must be a DNS subdomain (e.g. example.com/)".into());
    }
    if !is_name(name) {
        return Err("the key's name must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into());
    }
    if reserved(k) {
        return Err(format!("the key is reserved (prefixes {} and their subdomains)", RESERVED_PREFIXES.join(", ")));
    }
    Ok(())
}

fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_name(v) {
        Ok(())
    } else {
        Err("a label value must be empty or 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
    }
}

fn check_annotation_value(v: &str) -> Result<(), String> {
    if v.len() > MAX_ANNOTATION_VALUE {
        Err(format!("an annotation value must be at most {MAX_ANNOTATION_VALUE} bytes"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Correlation {
        let m = |e: &[(&str, &str)]| e.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Correlation { labels: m(labels), annotations: m(annotations) }
    }

    #[test]
    fn kubernetes_syntax_outside_the_reserved_prefixes() {
        let ok = [
            one(&[("jira-issue", "ABC-123")], &[]),
            one(&[("example.com/team", "a_b.c")], &[("jira.example.com/url", "https://jira/browse/ABC-1")]),
            one(&[("empty", "")], &[("note", "")]),
            one(&[], &[("free", "any text: spaces, / and ünïcode")]),
        ];
        for c in ok {
            assert_eq!(c.validate(), Ok(()), "{c:?}");
        }
        let long = "x".repeat(64);
        let bad = [
            (one(&[("Bad Key", "v")], &[]), "labels.Bad Key"),
            (one(&[("k", "has space")], &[]), "labels.k"),
            (one(&[("k", &long)], &[]), "labels.k"),
            (one(&[(&long, "v")], &[]), &*format!("labels.{long}")),
            (one(&[("UPPER.Example/x", "v")], &[]), "labels.UPPER.Example/x"),
            (one(&[("ambient-code.io/run", "1")], &[]), "labels.ambient-code.io/run"),
            (one(&[], &[("batch.kubernetes.io/job", "x")]), "annotations.batch.kubernetes.io/job"),
            (one(&[("agentic-session", "other")], &[]), "labels.agentic-session"),
            (one(&[], &[("k", &"v".repeat(MAX_ANNOTATION_VALUE + 1))]), "annotations.k"),
        ];
        for (c, field) in bad {
            assert_eq!(c.validate().map_err(|e| e.field), Err(field.to_string()), "{c:?}");
        }
        let many = Correlation {
            labels: (0..=MAX_ENTRIES).map(|i| (format!("k{i}"), String::new())).collect(),
            ..Default::default()
        };
        assert_eq!(many.validate().map_err(|e| e.field), Err("labels".into()));
        let bulky = Correlation {
            annotations: (0..9).map(|i| (format!("k{i}"), "v".repeat(MAX_ANNOTATION_VALUE))).collect(),
            ..Default::default()
        };
        assert_eq!(bulky.validate().map_err(|e| e.field), Err("annotations".into()), "over 8 KiB in all");
    }

    #[test]
    fn status_events_show_only_the_users_entries() {
        let labels = [("jira-issue", "ABC-1"), ("agentic-session", "s"), ("ambient-code.io/run", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let annotations = [("ambient-code.io/last-command", "id"), ("team", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(Correlation::of(&labels, &annotations), one(&[("jira-issue", "ABC-1")], &[("team", "a")]));
    }

    #[test]
    fn what_a_direct_edit_adds_past_the_bounds_is_not_shown() {
        // `kubectl annotate` bypasses the api: far too many, too large, or invalid entries.
        let labels =
            (0..100).map(|i| (format!("k{i:03}"), "v".into())).chain([("Bad Key".into(), "v".into())]).collect();
        let annotations = (0..100).map(|i| (format!("a{i:03}"), "x".repeat(900))).collect();
        let shown = Correlation::of(&labels, &annotations);
        assert_eq!(shown.labels.len(), MAX_ENTRIES);
        assert!(!shown.labels.contains_key("Bad Key"));
        assert_eq!(shown.validate(), Ok(()), "what is shown is always within the bounds");
        assert!(serde_json::to_vec(&shown).unwrap().len() <= MAX_TOTAL_BYTES + 64);
        let controls = [("k".to_string(), "\u{1}".repeat(1000))].into();
        let c = Correlation { annotations: controls, ..Default::default() };
        assert!(c.validate().is_ok(), "1000 bytes raw, 6000 encoded: under 8 KiB");
        let many: BTreeMap<String, String> = (0..2).map(|i| (format!("k{i}"), "\u{1}".repeat(1000))).collect();
        assert_eq!(
            Correlation { annotations: many, ..Default::default() }.validate().map_err(|e| e.field),
            Err("annotations".into()),
            "counted as encoded"
        );
    }

    #[test]
    fn the_schema_patterns_agree_with_the_checks() {
        let key = regex_lite(KEY_PATTERN);
        let value = regex_lite(LABEL_VALUE_PATTERN);
        for k in ["jira-issue", "example.com/team", "a", "A_b.C"] {
            assert!(key(k) && check_key(k).is_ok(), "{k}");
        }
        for k in ["Bad Key", "-a", "UPPER.com/x", "a/", "/a"] {
            assert!(!key(k) && check_key(k).is_err(), "{k}");
        }
        for v in ["", "ABC-123", "a.b_c"] {
            assert!(value(v) && check_label_value(v).is_ok(), "{v}");
        }
        for v in ["has space", "-x", "x-"] {
            assert!(!value(v) && check_label_value(v).is_err(), "{v}");
        }
    }

    /// The patterns through the JSON Schema validator the tests use.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let v = jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": pattern})).unwrap();
        move |s: &str| v.is_valid(&serde_json::json!(s))
    }
}
