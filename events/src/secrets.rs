//! The project's two credential Secrets and how a write changes them.
//!
//! - The **runner secret** (`ambient-runner-secrets`, or the name in
//!   `ProjectSettings.spec.runnerSecretsName`): model credentials such as `ANTHROPIC_API_KEY`.
//! - The **integration secret** (`ambient-non-vertex-integrations`, the name the existing web UI
//!   shows): Git, GitHub, GitLab and Jira credentials.
//!
//! Both reach the runner as environment variables. Reads never return values: every value reads
//! as [`MASK`]. A client that edits a form filled from a read sends the mask back for the values
//! it did not change, so a write is a *change*, not a replacement:
//!
//! | value sent | meaning |
//! |---|---|
//! | a string other than the mask | set the key to it |
//! | [`MASK`] | keep the stored value (refused when the key has none) |
//! | `null` | remove the key |
//! | key not sent | unchanged |
//!
//! The mask is therefore never stored, and a form that shows only some keys (the web UI's
//! Anthropic key field) cannot erase the others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What every stored value reads as.
pub const MASK: &str = "********";
/// The runner secret's name when ProjectSettings names none.
pub const RUNNER_SECRET_NAME: &str = "ambient-runner-secrets";
/// The integration secret's name (fixed).
pub const INTEGRATION_SECRET_NAME: &str = "ambient-non-vertex-integrations";
/// Keys one Secret may hold.
pub const MAX_KEYS: usize = 100;

/// Which of the project's credential Secrets a write is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProjectSecret {
    /// The runner secret (model credentials).
    #[default]
    Runner,
    /// The integration secret (Git, GitHub, GitLab, Jira).
    Integration,
}

impl ProjectSecret {
    /// The `app` label value of the Secret the reconciler writes.
    pub fn app_label(self) -> &'static str {
        match self {
            ProjectSecret::Runner => "ambient-runner-secrets",
            ProjectSecret::Integration => "ambient-integration-secrets",
        }
    }
}

/// The change a write makes to a Secret's data: what the sealed box carries.
///
/// Serialized as one JSON object: a key with a string value is set, a key with `null` is
/// removed. Keys not in it are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretChange(pub BTreeMap<String, Option<String>>);

/// Why a write is refused: the JSON field (`data.KEY`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SecretWriteError {
    /// The refused field.
    pub field: String,
    /// Why.
    pub message: String,
}

pub use crate::crd::is_env_name;

/// The change a client's `data` (values as sent: string or null) makes to a Secret holding
/// `stored` keys: masked values drop out (kept as stored), a mask for a key with no stored
/// value is refused, and the result may not leave more than [`MAX_KEYS`] keys.
pub fn plan(stored: &[String], sent: BTreeMap<String, Option<String>>) -> Result<SecretChange, SecretWriteError> {
    let refuse = |k: &str, m: String| SecretWriteError { field: format!("data.{k}"), message: m };
    let mut change = BTreeMap::new();
    for (k, v) in sent {
        if !is_env_name(&k) {
            return Err(refuse(&k, "keys must match [A-Za-z_][A-Za-z0-9_]*".into()));
        }
        match v {
            Some(v) if v == MASK => {
                if !stored.contains(&k) {
                    return Err(refuse(
                        &k,
                        format!("{MASK:?} stands for the stored value, and {k} has none: send the real value"),
                    ));
                }
            }
            other => {
                change.insert(k, other);
            }
        }
    }
    let after = stored.iter().filter(|k| !matches!(change.get(*k), Some(None))).count()
        + change.iter().filter(|(k, v)| v.is_some() && !stored.contains(k)).count();
    if after > MAX_KEYS {
        return Err(SecretWriteError {
            field: "data".into(),
            message: format!("a secret holds at most {MAX_KEYS} keys"),
        });
    }
    Ok(SecretChange(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(items: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        items.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect()
    }

    #[test]
    fn writes_are_changes_and_the_mask_keeps_the_stored_value() {
        let stored = vec!["ANTHROPIC_API_KEY".to_string(), "OTHER".to_string()];
        // (sent, expected change or refused field)
        type Pairs<'a> = Vec<(&'a str, Option<&'a str>)>;
        let cases: Vec<(Pairs, Result<Pairs, &str>)> = vec![
            // The UI's blind save: nothing changes, nothing is stored.
            (vec![("ANTHROPIC_API_KEY", Some(MASK))], Ok(vec![])),
            (vec![("ANTHROPIC_API_KEY", Some("sk-new"))], Ok(vec![("ANTHROPIC_API_KEY", Some("sk-new"))])),
            (vec![("OTHER", None), ("ANTHROPIC_API_KEY", Some(MASK))], Ok(vec![("OTHER", None)])),
            (vec![("NEW", Some(""))], Ok(vec![("NEW", Some(""))])),
            // A value that merely contains the mask is a value.
            (vec![("NEW", Some("********x"))], Ok(vec![("NEW", Some("********x"))])),
            // Removing a key that is not stored is harmless.
            (vec![("GONE", None)], Ok(vec![("GONE", None)])),
            (vec![("NEW", Some(MASK))], Err("data.NEW")),
            (vec![("1BAD", Some("x"))], Err("data.1BAD")),
            (vec![("A-B", None)], Err("data.A-B")),
        ];
        for (input, want) in cases {
            let got = plan(&stored, sent(&input));
            match want {
                Ok(items) => assert_eq!(got, Ok(SecretChange(sent(&items))), "{input:?}"),
                Err(field) => assert_eq!(got.map_err(|e| e.field), Err(field.to_string()), "{input:?}"),
            }
        }
    }

    #[test]
    fn the_key_limit_counts_what_the_secret_holds_after() {
        let stored: Vec<String> = (0..MAX_KEYS).map(|i| format!("K{i}")).collect();
        assert!(plan(&stored, sent(&[("NEW", Some("v"))])).is_err(), "one more than allowed");
        assert!(plan(&stored, sent(&[("NEW", Some("v")), ("K0", None)])).is_ok(), "one in, one out");
        assert!(plan(&stored, sent(&[("K1", Some("v"))])).is_ok(), "a change of a stored key");
    }

    #[test]
    fn a_change_serializes_as_one_object_with_nulls() {
        let c = SecretChange(sent(&[("A", Some("1")), ("B", None)]));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"A":"1","B":null}"#);
        assert_eq!(serde_json::from_str::<SecretChange>(r#"{"A":"1","B":null}"#).unwrap(), c);
    }
}
