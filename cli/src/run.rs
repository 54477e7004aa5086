//! Carries out a parsed command against the api.

use std::io::Read as _;
use std::time::{Duration, Instant};

use clap::CommandFactory as _;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::cli::{Cli, Command, Format, Keys, Permissions, Projects, Secrets, Sessions};
use crate::client::{Api, Failure, seg};
use crate::config;
use crate::output::{self, Kind};

/// Runs `cli`.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "ambient", &mut std::io::stdout());
        return Ok(());
    }
    let api = connect(&cli)?;
    let out = cli.output;
    match cli.command {
        Command::Completion { .. } => Ok(()),
        Command::Whoami => {
            output::structured(if out == Format::Yaml { out } else { Format::Json }, &api.get("/api/me").await?)
        }
        Command::Access { project } => {
            let v = api.get(&format!("/api/projects/{}/access", seg(&project)?)).await?;
            output::structured(if out == Format::Yaml { out } else { Format::Json }, &v)
        }
        Command::Status { id } => {
            let v = api.get(&format!("/api/commands/{id}")).await?;
            output::structured(if out == Format::Yaml { out } else { Format::Json }, &v)
        }
        Command::Projects(c) => projects(&api, out, c).await,
        Command::Sessions(c) => sessions(&api, out, c).await,
        Command::Permissions(c) => permissions(&api, out, c).await,
        Command::Keys(c) => keys(&api, out, c).await,
        Command::Secrets(c) => secrets(&api, out, c).await,
    }
}

/// The api client of `cli`: its server, and the token from the flags, the environment or the
/// kubeconfig.
fn connect(cli: &Cli) -> Result<Api, Failure> {
    let server =
        cli.server.clone().ok_or_else(|| Failure::Local("no api URL: pass --server or set AMBIENT_API_URL".into()))?;
    let token = match &cli.token {
        Some(t) => t.clone(),
        None => config::kubeconfig_path(cli.kubeconfig.as_deref())
            .map(|p| config::kubeconfig_token(&p))
            .transpose()?
            .flatten()
            .ok_or_else(|| {
                Failure::Local(
                    "no token: pass --token, set AMBIENT_TOKEN, or log in (oc login / a kubeconfig context with a token)"
                        .into(),
                )
            })?,
    };
    if !config::may_send_token(&server) {
        return Err(Failure::Local(format!(
            "refusing to send your token to {server} in clear text: use https (plain http only to this host)"
        )));
    }
    Api::new(&server, token, Duration::from_secs(cli.request_timeout.max(1)))
}

/// What a mutation answered: the object, a 202's pending command, or nothing.
fn done(out: Format, kind: Kind, what: &str, v: &Value) -> Result<(), Failure> {
    if v.get("state").and_then(Value::as_str) == Some("pending") {
        // Accepted: applied soon. The command id lets a script follow it.
        let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
        eprintln!("{what}: accepted, not yet applied (command {id}; `ambient command {id}`)");
    } else {
        eprintln!("{what}");
    }
    match out {
        Format::Json | Format::Yaml if !v.is_null() => output::structured(out, v),
        Format::Name if !v.is_null() => {
            println!("{}/{}", kind.name(), v.get("name").and_then(Value::as_str).unwrap_or_default());
            Ok(())
        }
        _ => Ok(()),
    }
}

fn optional(fields: &[(&str, &Option<String>)]) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert((*k).into(), json!(v));
        }
    }
    Value::Object(m)
}

async fn projects(api: &Api, out: Format, c: Projects) -> Result<(), Failure> {
    match c {
        Projects::List => output::list(out, Kind::Project, &api.get("/api/projects").await?),
        Projects::Get { name } => {
            output::one(out, Kind::Project, &api.get(&format!("/api/projects/{}", seg(&name)?)).await?)
        }
        Projects::Create { name, display_name, description } => {
            let mut body = optional(&[("displayName", &display_name), ("description", &description)]);
            body["name"] = json!(name);
            let v = api.call(Method::POST, "/api/projects", Some(&body)).await?;
            done(out, Kind::Project, &format!("project {name} created"), &v)
        }
        Projects::Update { name, display_name, description } => {
            let body = optional(&[("displayName", &display_name), ("description", &description)]);
            let v = api.call(Method::PUT, &format!("/api/projects/{}", seg(&name)?), Some(&body)).await?;
            done(out, Kind::Project, &format!("project {name} updated"), &v)
        }
        Projects::Delete { name } => {
            let v = api.call(Method::DELETE, &format!("/api/projects/{}", seg(&name)?), None).await?;
            done(out, Kind::Project, &format!("project {name} deleted"), &v)
        }
    }
}

fn sessions_path(project: &str) -> Result<String, Failure> {
    Ok(format!("/api/projects/{}/agentic-sessions", seg(project)?))
}

/// The session spec of `file` (`-`: stdin; YAML or JSON) with the flags over it.
fn spec(file: Option<&std::path::Path>, overrides: &[(&str, &Option<String>)]) -> Result<Value, Failure> {
    let mut spec = match file {
        None => json!({}),
        Some(p) => {
            let mut text = String::new();
            let read = if p.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(p).map(|t| text = t)
            };
            read.map_err(|e| Failure::Local(format!("reading {}: {e}", p.display())))?;
            let v: Value = serde_saphyr::from_str(&text)
                .map_err(|e| Failure::Local(format!("{} is not a YAML or JSON session spec: {e}", p.display())))?;
            if !v.is_object() {
                return Err(Failure::Local(format!("{} must hold one object (the session spec)", p.display())));
            }
            v
        }
    };
    for (k, v) in overrides {
        if let Some(v) = v {
            spec[*k] = json!(v);
        }
    }
    Ok(spec)
}

async fn sessions(api: &Api, out: Format, c: Sessions) -> Result<(), Failure> {
    match c {
        Sessions::List { at } => output::list(out, Kind::Session, &api.get(&sessions_path(&at.project)?).await?),
        Sessions::Get { at, name } => {
            let v = api.get(&format!("{}/{}", sessions_path(&at.project)?, seg(&name)?)).await?;
            output::one(out, Kind::Session, &v)
        }
        Sessions::Create {
            at,
            file,
            name,
            prompt,
            display_name,
            labels,
            annotations,
            wait,
            until_done,
            wait_timeout,
        } => {
            let mut body =
                spec(file.as_deref(), &[("name", &name), ("prompt", &prompt), ("displayName", &display_name)])?;
            add_pairs(&mut body, "labels", &labels)?;
            add_pairs(&mut body, "annotations", &annotations)?;
            let v = api.call(Method::POST, &sessions_path(&at.project)?, Some(&body)).await?;
            let created = v.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            done(out, Kind::Session, &format!("session {created} created in {}", at.project), &v)?;
            if wait {
                wait_for(api, &at.project, &created, until_done, Duration::from_secs(wait_timeout)).await?;
            }
            Ok(())
        }
        Sessions::Delete { at, name } => {
            let v = api.call(Method::DELETE, &format!("{}/{}", sessions_path(&at.project)?, seg(&name)?), None).await?;
            done(out, Kind::Session, &format!("session {name} deleted"), &v)
        }
        Sessions::Start { at, name } => {
            let path = format!("{}/{}/start", sessions_path(&at.project)?, seg(&name)?);
            let v = api.call(Method::POST, &path, None).await?;
            done(out, Kind::Session, &format!("session {name} started"), &v)
        }
        Sessions::Stop { at, name } => {
            let path = format!("{}/{}/stop", sessions_path(&at.project)?, seg(&name)?);
            let v = api.call(Method::POST, &path, None).await?;
            done(out, Kind::Session, &format!("session {name} stopped"), &v)
        }
        Sessions::Watch { at, name } => crate::watch::watch(api, out, &at.project, name.as_deref()).await,
        Sessions::Messages { at, name, follow } => messages(api, out, &at.project, &name, follow).await,
    }
}

/// Adds `key=value` pairs to the map `field` of a session spec.
fn add_pairs(body: &mut Value, field: &str, pairs: &[String]) -> Result<(), Failure> {
    if pairs.is_empty() {
        return Ok(());
    }
    let Some(spec) = body.as_object_mut() else { return Ok(()) };
    let map = spec.entry(field).or_insert_with(|| json!({}));
    let Some(map) = map.as_object_mut() else {
        return Err(Failure::Local(format!("{field} in the spec file must be a map")));
    };
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| Failure::Local(format!("{field}: {p:?} is not key=value")))?;
        map.insert(k.to_string(), json!(v));
    }
    Ok(())
}

/// Phases a run ends in, and whether that is a success.
fn ended(phase: &str) -> Option<bool> {
    match phase {
        "Completed" => Some(true),
        "Failed" | "Error" | "Stopped" => Some(false),
        _ => None,
    }
}

/// Waits until `session` runs (or, `until_done`, has ended), printing each phase it passes.
async fn wait_for(api: &Api, project: &str, session: &str, until_done: bool, limit: Duration) -> Result<(), Failure> {
    let path = format!("{}/{}", sessions_path(project)?, seg(session)?);
    let start = Instant::now();
    let mut last = String::new();
    loop {
        // A session accepted but not applied yet reads as queued (Pending); a 404 is a brief lag.
        match api.get(&path).await {
            Ok(v) => {
                let phase = v.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending").to_string();
                if phase != last {
                    let why = v.pointer("/status/message").and_then(Value::as_str).unwrap_or_default();
                    eprintln!(
                        "{session}: {phase}{}  ({:.0} s)",
                        if why.is_empty() { String::new() } else { format!(" — {why}") },
                        start.elapsed().as_secs_f64()
                    );
                    last = phase.clone();
                }
                match ended(&phase) {
                    Some(true) => return Ok(()),
                    Some(false) => {
                        let reason = v.pointer("/status/reason").and_then(Value::as_str).unwrap_or("no reason given");
                        return Err(Failure::Waited(format!("session {session} ended {phase} ({reason})")));
                    }
                    None if phase == "Running" && !until_done => return Ok(()),
                    None => {}
                }
            }
            Err(Failure::Api { status: 404, .. }) if start.elapsed() < Duration::from_secs(10) => {}
            Err(e) => return Err(e),
        }
        if start.elapsed() > limit {
            return Err(Failure::Waited(format!("session {session} still {last} after {} s", limit.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints a session's messages; with `follow`, keeps waiting for new ones (long-poll), and rides
/// out an api that is briefly unavailable.
async fn messages(api: &Api, out: Format, project: &str, session: &str, follow: bool) -> Result<(), Failure> {
    let base = format!("{}/{}/messages", sessions_path(project)?, seg(session)?);
    let streaming = api.streaming()?;
    let mut after = 0u64;
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = if follow { "&wait=20" } else { "" };
        let v =
            match tokio::time::timeout(Duration::from_secs(60), streaming.get(&format!("{base}?after={after}{wait}")))
                .await
            {
                Ok(Ok(v)) => v,
                Ok(Err(e @ (Failure::Unreachable { .. } | Failure::Api { status: 429 | 500.., .. }))) if follow => {
                    eprintln!("messages: {e}; retrying in {} s", backoff.as_secs());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) if follow => continue,
                Err(_) => return Err(Failure::Unreachable { url: api.url(""), cause: "no answer within 60 s".into() }),
            };
        backoff = Duration::from_secs(1);
        let page = v.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        for m in &page {
            match out {
                Format::Json => println!("{m}"),
                Format::Yaml => output::structured(out, m)?,
                _ => {
                    let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
                    let payload = m.get("payload").cloned().unwrap_or(Value::Null);
                    let content = payload
                        .get("content")
                        .and_then(Value::as_str)
                        .map(String::from)
                        .unwrap_or_else(|| payload.to_string());
                    let seq = m.get("seq").and_then(Value::as_u64).unwrap_or(0);
                    println!("{seq:>6}  {ty:<22} {}", crate::watch::printable(&content));
                }
            }
        }
        after = v.get("lastSeq").and_then(Value::as_u64).unwrap_or(after);
        let more = v.get("hasMore").and_then(Value::as_bool).unwrap_or(false);
        if !more && !follow {
            return Ok(());
        }
        if page.is_empty() && !more {
            // Answered at once with nothing (a session not created yet): do not spin.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn permissions(api: &Api, out: Format, c: Permissions) -> Result<(), Failure> {
    let path = |p: &str| -> Result<String, Failure> { Ok(format!("/api/projects/{}/permissions", seg(p)?)) };
    match c {
        Permissions::List { at } => output::list(out, Kind::Permission, &api.get(&path(&at.project)?).await?),
        Permissions::Add { at, subject_type, subject, role } => {
            let body = json!({"subjectType": subject_type, "subjectName": subject, "role": role});
            let v = api.call(Method::POST, &path(&at.project)?, Some(&body)).await?;
            done(out, Kind::Permission, &format!("{subject_type} {subject} may now {role} in {}", at.project), &v)
        }
        Permissions::Remove { at, subject_type, subject } => {
            let p = format!("{}/{}/{}", path(&at.project)?, seg(&subject_type)?, seg(&subject)?);
            let v = api.call(Method::DELETE, &p, None).await?;
            done(out, Kind::Permission, &format!("{subject_type} {subject}'s grant in {} revoked", at.project), &v)
        }
    }
}

async fn keys(api: &Api, out: Format, c: Keys) -> Result<(), Failure> {
    let path = |p: &str| -> Result<String, Failure> { Ok(format!("/api/projects/{}/keys", seg(p)?)) };
    match c {
        Keys::List { at } => output::list(out, Kind::Key, &api.get(&path(&at.project)?).await?),
        Keys::Create { at, name, role, description, expiration_seconds } => {
            let mut body = json!({"name": name, "role": role});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(s) = expiration_seconds {
                body["expirationSeconds"] = json!(s);
            }
            let v = api.call(Method::POST, &path(&at.project)?, Some(&body)).await?;
            match out {
                // The token is shown once: the formats for people and for scripts both print it.
                Format::Table | Format::Name => {
                    eprintln!("key {name} created; its token (shown once, keep it now):");
                    println!("{}", v.get("key").and_then(Value::as_str).unwrap_or_default());
                    Ok(())
                }
                _ => done(out, Kind::Key, &format!("key {name} created"), &v),
            }
        }
        Keys::Delete { at, id } => {
            let v = api.call(Method::DELETE, &format!("{}/{}", path(&at.project)?, seg(&id)?), None).await?;
            done(out, Kind::Key, &format!("key {id} revoked"), &v)
        }
    }
}

async fn secrets(api: &Api, out: Format, c: Secrets) -> Result<(), Failure> {
    let path = |p: &str, integration: bool| -> Result<String, Failure> {
        let which = if integration { "integration-secrets" } else { "runner-secrets" };
        Ok(format!("/api/projects/{}/{which}", seg(p)?))
    };
    let name = |integration: bool| if integration { "integration secret" } else { "runner secret" };
    match c {
        Secrets::List { at, integration } => {
            let v = api.get(&path(&at.project, integration)?).await?;
            if matches!(out, Format::Json | Format::Yaml) {
                return output::structured(out, &v);
            }
            let rows: Vec<Value> =
                v["data"].as_object().into_iter().flatten().map(|(k, _)| json!({"key": k})).collect();
            output::list(out, Kind::SecretKey, &json!({"items": rows}))
        }
        Secrets::Set { at, key, from_file, integration } => {
            let value = secret_value(&key, from_file.as_deref())?;
            let body = json!({"data": {key.as_str(): value}});
            let v = api.call(Method::PUT, &path(&at.project, integration)?, Some(&body)).await?;
            done(out, Kind::SecretKey, &format!("{key} set in {}'s {}", at.project, name(integration)), &v)
        }
        Secrets::Unset { at, keys, integration } => {
            let data: Map<String, Value> = keys.iter().map(|k| (k.clone(), Value::Null)).collect();
            let v = api.call(Method::PUT, &path(&at.project, integration)?, Some(&json!({"data": data}))).await?;
            done(
                out,
                Kind::SecretKey,
                &format!("{} removed from {}'s {}", keys.join(", "), at.project, name(integration)),
                &v,
            )
        }
        Secrets::Config { at, secret_name } => {
            let p = format!("{}/config", path(&at.project, false)?);
            match secret_name {
                None => output::structured(if out == Format::Yaml { out } else { Format::Json }, &api.get(&p).await?),
                Some(n) => {
                    let v = api.call(Method::PUT, &p, Some(&json!({"secretName": n}))).await?;
                    done(out, Kind::SecretKey, &format!("{}'s runner secret is now {n}", at.project), &v)
                }
            }
        }
    }
}

/// A secret's value from a file or standard input, without one trailing newline.
fn secret_value(key: &str, file: Option<&std::path::Path>) -> Result<String, Failure> {
    let raw = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| Failure::Local(format!("reading the value of {key} from {}: {e}", f.display())))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("value of {key} (then Enter and Ctrl-D):");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::Local(format!("reading the value of {key} from standard input: {e}")))?;
            s
        }
    };
    let value = raw.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&raw);
    if value.is_empty() {
        return Err(Failure::Local(format!(
            "the value of {key} is empty (use `ambient secrets unset` to remove a key)"
        )));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_from_a_file_with_the_flags_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.yaml");
        std::fs::write(&f, "name: from-file\nprompt: |\n  Say hello\ntimeout: 600\nllmSettings:\n  model: m\n")
            .unwrap();
        let v = spec(Some(&f), &[("name", &None), ("prompt", &Some("Override".into()))]).unwrap();
        assert_eq!(
            v,
            json!({"name": "from-file", "prompt": "Override", "timeout": 600, "llmSettings": {"model": "m"}})
        );
        std::fs::write(&f, "- a list\n").unwrap();
        assert!(matches!(spec(Some(&f), &[]), Err(Failure::Local(_))));
        assert!(matches!(spec(Some(&dir.path().join("missing")), &[]), Err(Failure::Local(_))));
        assert_eq!(spec(None, &[("prompt", &Some("p".into()))]).unwrap(), json!({"prompt": "p"}));
    }

    #[test]
    fn runs_end_well_or_badly() {
        assert_eq!(ended("Completed"), Some(true));
        for p in ["Failed", "Error", "Stopped"] {
            assert_eq!(ended(p), Some(false));
        }
        for p in ["Pending", "Creating", "Running"] {
            assert_eq!(ended(p), None);
        }
    }
}
