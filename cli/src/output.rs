//! Printing what the api answered: a table of chosen columns per kind, the JSON as it came, the
//! same as YAML, or `kind/name` lines.

use serde_json::Value;

use crate::cli::Format;
use crate::client::Failure;

/// What kind of object a value is, and how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A project view.
    Project,
    /// An AgenticSession.
    Session,
    /// A permission `{subjectType, subjectName, role}`.
    Permission,
    /// An access key.
    Key,
    /// A key of a secret `{key}`.
    SecretKey,
}

impl Kind {
    /// Its name in `kind/name` output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::Session => "session",
            Kind::Permission => "permission",
            Kind::Key => "key",
            Kind::SecretKey => "secret-key",
        }
    }

    fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Project => &[("NAME", "/name"), ("DISPLAY NAME", "/displayName"), ("STATUS", "/status")],
            Kind::Session => &[
                ("NAME", "/metadata/name"),
                ("DISPLAY NAME", "/spec/displayName"),
                ("PHASE", "/status/phase"),
                ("REASON", "/status/reason"),
                ("CREATED", "/metadata/creationTimestamp"),
            ],
            Kind::Permission => &[("TYPE", "/subjectType"), ("SUBJECT", "/subjectName"), ("ROLE", "/role")],
            Kind::Key => &[("ID", "/id"), ("NAME", "/name"), ("ROLE", "/role"), ("CREATED", "/createdAt")],
            Kind::SecretKey => &[("KEY", "/key")],
        }
    }

    /// The object's name.
    pub fn name_of(self, v: &Value) -> String {
        let p = match self {
            Kind::Session => "/metadata/name",
            Kind::Permission => "/subjectName",
            Kind::Key => "/id",
            Kind::SecretKey => "/key",
            _ => "/name",
        };
        text(v.pointer(p))
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The items of a list answer (`{items: [...]}` or a bare array).
pub fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        _ => v.get("items").and_then(Value::as_array).cloned().unwrap_or_default(),
    }
}

/// Renders `rows` (objects of `kind`) as aligned columns.
pub fn table(kind: Kind, rows: &[Value]) -> String {
    let cols = kind.columns();
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| cols.iter().map(|(_, p)| crate::watch::printable(&text(r.pointer(p)))).collect()).collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| cells.iter().map(|c| c[i].chars().count()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let line = |vals: Vec<String>| {
        let mut s = String::new();
        for (i, v) in vals.iter().enumerate() {
            if i + 1 == vals.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(cols.iter().map(|(h, _)| h.to_string()).collect());
    for c in cells {
        out.push_str(&line(c));
    }
    out
}

/// Prints a list answer.
pub fn list(format: Format, kind: Kind, answer: &Value) -> Result<(), Failure> {
    let rows = items(answer);
    match format {
        Format::Table if rows.is_empty() => eprintln!("no {}s", kind.name()),
        Format::Table => print!("{}", table(kind, &rows)),
        Format::Name => rows.iter().for_each(|r| println!("{}/{}", kind.name(), kind.name_of(r))),
        Format::Json | Format::Yaml => structured(format, answer)?,
    }
    Ok(())
}

/// Prints one object.
pub fn one(format: Format, kind: Kind, v: &Value) -> Result<(), Failure> {
    match format {
        Format::Table => print!("{}", table(kind, std::slice::from_ref(v))),
        Format::Name => println!("{}/{}", kind.name(), kind.name_of(v)),
        Format::Json | Format::Yaml => structured(format, v)?,
    }
    Ok(())
}

/// Prints `v` as JSON or YAML.
pub fn structured(format: Format, v: &Value) -> Result<(), Failure> {
    match format {
        Format::Yaml => {
            let y = serde_saphyr::to_string(v).map_err(|e| Failure::Local(format!("YAML: {e}")))?;
            print!("{y}");
        }
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_their_columns() {
        let rows = [
            json!({"name": "a", "displayName": "Team A", "status": "Active"}),
            json!({"name": "longer-name", "status": "Terminating"}),
        ];
        assert_eq!(
            table(Kind::Project, &rows),
            "NAME          DISPLAY NAME   STATUS\na             Team A         Active\nlonger-name                  Terminating\n"
        );
        let s =
            json!({"metadata": {"name": "s1", "creationTimestamp": "t"}, "spec": {}, "status": {"phase": "Running"}});
        assert!(table(Kind::Session, std::slice::from_ref(&s)).lines().nth(1).unwrap().starts_with("s1"));
        assert_eq!(Kind::Session.name_of(&s), "s1");
    }

    #[test]
    fn lists_come_as_items_or_arrays() {
        assert_eq!(items(&json!({"items": [1, 2], "total": 2})).len(), 2);
        assert_eq!(items(&json!([1])).len(), 1);
        assert!(items(&json!({})).is_empty());
    }
}
