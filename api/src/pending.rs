//! Accepted means visible: what reads show of commands accepted but not applied yet.
//!
//! A write answered 202 (its result did not come within the wait) must not look like nothing
//! happened: the web UI reads the new session right after creating it, and retries the whole
//! creation (a second session) when that read fails. So every api replica overlays its reads
//! with the commands any replica accepted:
//!
//! - after JetStream acknowledged a command, the api that published it announces it on
//!   `ambient.accepted.<project>.<kind>.<action>` (core NATS, not stored; the command as
//!   published, signature included, verified here like the reconciler does);
//! - every replica keeps those it shows until the command's result (`ambient.result.>`)
//!   arrives, or [`TTL`] passes (a replica that starts later sees no earlier announcement: such
//!   a change shows once it is applied, as before):
//!
//! | queued command | what reads show meanwhile |
//! |---|---|
//! | session creation | a session in phase Pending whose message says it is queued (where the cluster has none) |
//! | session stop | the session (if not already ended) in phase `Stopping`, message saying the stop is queued |
//! | session deletion | the session left out of lists; read alone, a message saying the deletion is queued |
//! | permission grant | a row `{subjectType, subjectName, role, pending: true}` |
//! | permission revoke | its rows marked `pending: true, revoking: true` |
//!
//! The reads ([`crate::reads::Reads`]) apply the overlay; nothing else consults it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::commands::{CommandBody, CommandType};
use events::crd::{AgenticSession, AgenticSessionStatus};
use events::signing::CommandVerifier;
use events::{Command, Phase};
use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Prefix of the announcements.
pub const ACCEPTED: &str = "ambient.accepted";
/// How long a queued creation shows without news of it.
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// Results remembered so that an announcement arriving after its result is ignored.
const SETTLED_MEMORY: usize = 4096;
/// Queued changes kept per project (the oldest go first): memory stays bounded whatever one
/// tenant queues.
const MAX_PER_PROJECT: usize = 2000;
/// Characters of a queued session's prompt kept for its view (the rest shows once applied).
const PROMPT_SHOWN: usize = 2000;

/// Whether commands of `ty` change what reads show while they wait (only those are announced).
pub fn shows(ty: CommandType) -> bool {
    matches!(
        ty,
        CommandType::SessionCreate
            | CommandType::SessionStop
            | CommandType::SessionDelete
            | CommandType::PermissionGrant
            | CommandType::PermissionRevoke
    )
}

/// The phase a session shows while its stop is queued (a view only, not a CRD phase).
pub const STOPPING: &str = "Stopping";

/// The announcement subject of a command published on `subject` (`ambient.cmd.…`).
pub fn announcement_subject(command_subject: &str) -> Option<String> {
    command_subject.strip_prefix(events::subjects::COMMANDS).map(|rest| format!("{ACCEPTED}{rest}"))
}

/// The session a queued creation shows as: phase Pending, a message saying it is queued, the
/// requested spec, created at the command's time (pure).
pub fn queued_session(cmd: &Command) -> Option<AgenticSession> {
    let CommandBody::SessionCreate(c) = &cmd.body else { return None };
    // Kept small: every replica holds every project's queue.
    let mut spec = c.spec.clone();
    if spec.prompt.chars().count() > PROMPT_SHOWN {
        spec.prompt = spec.prompt.chars().take(PROMPT_SHOWN).chain(std::iter::once('…')).collect();
    }
    spec.environment_variables.clear();
    let mut s = AgenticSession::new(c.name.as_str(), spec);
    s.metadata = ObjectMeta {
        name: Some(c.name.to_string()),
        namespace: Some(cmd.project.to_string()),
        creation_timestamp: k8s_openapi::jiff::Timestamp::from_millisecond(cmd.time.timestamp_millis()).ok().map(Time),
        labels: Some(c.labels.clone()).filter(|l| !l.is_empty()),
        annotations: Some(c.annotations.clone()).filter(|a| !a.is_empty()),
        ..Default::default()
    };
    s.status = Some(AgenticSessionStatus {
        phase: Some(Phase::Pending),
        message: Some(format!("queued: accepted as command {}, waiting to be applied", cmd.id)),
        ..Default::default()
    });
    Some(s)
}

struct Queued {
    command: Uuid,
    at: DateTime<Utc>,
    change: Change,
}

/// What a queued command changes, as reads show it.
enum Change {
    Create(Arc<AgenticSession>),
    Stop(String),
    Delete(String),
    Grant { subject_type: &'static str, subject_name: String, role: &'static str },
    Revoke { subject_type: &'static str, subject_name: String },
}

impl Change {
    fn of(cmd: &Command) -> Option<Change> {
        Some(match &cmd.body {
            CommandBody::SessionCreate(_) => Change::Create(Arc::new(queued_session(cmd)?)),
            CommandBody::SessionStop(r) => Change::Stop(r.name.to_string()),
            CommandBody::SessionDelete(r) => Change::Delete(r.name.to_string()),
            CommandBody::PermissionGrant(g) => Change::Grant {
                subject_type: g.subject_type.as_str(),
                subject_name: g.subject_name.to_string(),
                role: g.role.as_str(),
            },
            CommandBody::PermissionRevoke(r) => {
                Change::Revoke { subject_type: r.subject_type.as_str(), subject_name: r.subject_name.to_string() }
            }
            _ => return None,
        })
    }
}

/// The overlay.
#[derive(Default)]
pub struct Pending {
    /// Queued changes by project, oldest first.
    queued: RwLock<BTreeMap<String, Vec<Queued>>>,
    /// Recently settled command ids, oldest first.
    settled: RwLock<(VecDeque<Uuid>, HashMap<Uuid, ()>)>,
}

impl Pending {
    /// Notes an accepted command.
    pub fn accepted(&self, cmd: &Command) {
        let Some(change) = Change::of(cmd) else { return };
        if self.settled.read().is_ok_and(|s| s.1.contains_key(&cmd.id)) {
            return;
        }
        if let Ok(mut m) = self.queued.write() {
            let queued = m.entry(cmd.project.to_string()).or_default();
            if !queued.iter().any(|q| q.command == cmd.id) {
                queued.push(Queued { command: cmd.id, at: cmd.time, change });
                if queued.len() > MAX_PER_PROJECT {
                    queued.remove(0);
                }
            }
        }
    }

    /// Notes that command `id` has its result: whatever it queued is the cluster's to show now.
    pub fn settled(&self, id: Uuid) {
        if let Ok(mut s) = self.settled.write() {
            if s.1.insert(id, ()).is_none() {
                s.0.push_back(id);
            }
            while s.0.len() > SETTLED_MEMORY {
                if let Some(old) = s.0.pop_front() {
                    s.1.remove(&old);
                }
            }
        }
        if let Ok(mut m) = self.queued.write() {
            for queued in m.values_mut() {
                queued.retain(|q| q.command != id);
            }
            m.retain(|_, queued| !queued.is_empty());
        }
    }

    /// The live queued changes of `project`, oldest first, through `f`. Only those accepted
    /// after `since` (the project's creation): a project deleted and created again under the same
    /// name shows nothing queued for the earlier one.
    fn with_queued<T>(
        &self,
        project: &str,
        since: Option<DateTime<Utc>>,
        f: impl FnOnce(&mut dyn Iterator<Item = &Change>) -> T,
    ) -> T {
        let now = Utc::now();
        let guard = self.queued.read();
        let empty = Vec::new();
        let queued = guard.as_ref().ok().and_then(|m| m.get(project)).unwrap_or(&empty);
        f(&mut queued.iter().filter(|q| Self::live(q, now) && since.is_none_or(|t| q.at >= t)).map(|q| &q.change))
    }

    fn live(q: &Queued, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(q.at).to_std().is_ok_and(|age| age < TTL) || q.at > now
    }

    /// The queued creation of `project/name`, if one shows.
    pub fn session(&self, project: &str, since: Option<DateTime<Utc>>, name: &str) -> Option<Arc<AgenticSession>> {
        self.with_queued(project, since, |q| {
            q.filter_map(|c| match c {
                Change::Create(s) if s.metadata.name.as_deref() == Some(name) => Some(s.clone()),
                _ => None,
            })
            .last()
        })
    }

    /// The queued creations of `project`, one per name (the latest).
    pub fn sessions_of(&self, project: &str, since: Option<DateTime<Utc>>) -> Vec<Arc<AgenticSession>> {
        self.with_queued(project, since, |q| {
            let mut by_name = BTreeMap::new();
            for c in q {
                if let Change::Create(s) = c {
                    by_name.insert(s.metadata.name.clone().unwrap_or_default(), s.clone());
                }
            }
            by_name.into_values().collect()
        })
    }

    /// The sessions of `project` with a deletion queued.
    pub fn deleting(&self, project: &str, since: Option<DateTime<Utc>>) -> std::collections::BTreeSet<String> {
        self.with_queued(project, since, |q| {
            q.filter_map(|c| match c {
                Change::Delete(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
        })
    }

    /// A session's JSON view (`session_json`) with its queued stop or deletion shown.
    pub fn overlay_session(&self, project: &str, since: Option<DateTime<Utc>>, view: &mut Value) {
        let Some(name) = view["metadata"]["name"].as_str().map(str::to_string) else { return };
        let (stopping, deleting) = self.with_queued(project, since, |q| {
            q.fold((false, false), |(s, d), c| match c {
                Change::Stop(n) if *n == name => (true, d),
                Change::Delete(n) if *n == name => (s, true),
                _ => (s, d),
            })
        });
        let ended = view["status"]["phase"]
            .as_str()
            .and_then(|p| serde_json::from_value::<Phase>(Value::String(p.into())).ok())
            .is_some_and(Phase::is_terminal);
        if deleting {
            view["status"]["message"] = Value::String("deletion requested; waiting to be applied".into());
        } else if stopping && !ended {
            view["status"]["phase"] = Value::String(STOPPING.into());
            view["status"]["message"] = Value::String("stop requested; waiting to be applied".into());
        }
    }

    /// A project's permission rows (`{subjectType, subjectName, role}`) with its queued grants
    /// and revocations shown.
    pub fn overlay_permissions(&self, project: &str, since: Option<DateTime<Utc>>, rows: &mut Vec<Value>) {
        self.with_queued(project, since, |q| {
            for c in q {
                match c {
                    Change::Grant { subject_type, subject_name, role } => {
                        let shown = rows.iter().any(|r| r["subjectType"] == *subject_type && r["subjectName"] == subject_name.as_str() && r["role"] == *role);
                        if !shown {
                            rows.push(json!({"subjectType": subject_type, "subjectName": subject_name, "role": role, "pending": true}));
                        }
                    }
                    Change::Revoke { subject_type, subject_name } => {
                        for r in rows.iter_mut().filter(|r| r["subjectType"] == *subject_type && r["subjectName"] == subject_name.as_str()) {
                            r["pending"] = Value::Bool(true);
                            r["revoking"] = Value::Bool(true);
                        }
                    }
                    _ => {}
                }
            }
        });
    }

    /// Drops what expired.
    fn expire(&self) {
        let now = Utc::now();
        if let Ok(mut m) = self.queued.write() {
            for queued in m.values_mut() {
                queued.retain(|q| Self::live(q, now));
            }
            m.retain(|_, queued| !queued.is_empty());
        }
    }
}

/// Feeds `pending` from the announcements and results until `stop`.
pub async fn run(nats: async_nats::Client, verifier: CommandVerifier, pending: Arc<Pending>, stop: CancellationToken) {
    let subscribe = |subject: String| {
        let nats = nats.clone();
        async move { nats.subscribe(subject).await }
    };
    let (announced, results) = match tokio::try_join!(
        subscribe(format!("{ACCEPTED}.>")),
        subscribe(format!("{}.>", events::subjects::RESULTS))
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "subscribing to accepted commands failed: accepted writes show only once applied");
            return;
        }
    };
    let (mut announced, mut results) = (announced, results);
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => pending.expire(),
            Some(m) = announced.next() => {
                let subject = m.subject.as_str().replacen(ACCEPTED, events::subjects::COMMANDS, 1);
                match events::wire::decode_command(&subject, m.headers.as_ref(), &m.payload, &verifier) {
                    Ok(cmd) => pending.accepted(&cmd),
                    Err((e, _)) => tracing::warn!(error = %e, "an announcement of an accepted command was refused"),
                }
            }
            Some(m) = results.next() => {
                if let Ok(r) = events::wire::decode_result(m.headers.as_ref(), &m.payload) {
                    pending.settled(r.command_id);
                }
            }
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::commands::SessionCreate;
    use events::{Principal, ProjectName, SessionName};

    fn create(project: &str, name: &str) -> Command {
        let spec = serde_json::from_value(serde_json::json!({"prompt": "hi", "interactive": true})).unwrap();
        let body = CommandBody::SessionCreate(SessionCreate::new(SessionName::new(name).unwrap(), spec));
        Command::new(ProjectName::new(project).unwrap(), Principal { user: "alice".into(), ..Default::default() }, body)
    }

    #[test]
    fn a_queued_creation_shows_as_a_pending_session_until_its_result() {
        let p = Pending::default();
        let cmd = create("team-a", "s1");
        p.accepted(&cmd);
        p.accepted(&create("team-b", "s2"));
        let s = p.session("team-a", None, "s1").expect("shown");
        assert_eq!(s.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(s.status.as_ref().and_then(|st| st.phase), Some(Phase::Pending));
        assert!(s.status.as_ref().and_then(|st| st.message.clone()).is_some_and(|m| m.contains(&cmd.id.to_string())));
        assert_eq!(s.spec.prompt, "hi");
        assert!(s.metadata.uid.is_none(), "no uid until the cluster has it");
        assert_eq!(p.sessions_of("team-a", None).len(), 1);
        assert!(p.sessions_of("team", None).is_empty(), "a prefix of a project is another project");
        p.settled(cmd.id);
        assert!(p.session("team-a", None, "s1").is_none());
        // An announcement that arrives after its result shows nothing.
        p.accepted(&cmd);
        assert!(p.session("team-a", None, "s1").is_none());
        assert_eq!(p.sessions_of("team-b", None).len(), 1);
    }

    fn command(project: &str, body: CommandBody) -> Command {
        Command::new(ProjectName::new(project).unwrap(), Principal { user: "alice".into(), ..Default::default() }, body)
    }

    #[test]
    fn queued_stops_deletions_grants_and_revocations_show_until_their_results() {
        let p = Pending::default();
        let name = || SessionName::new("s1").unwrap();
        let stop = command("team-a", CommandBody::SessionStop(events::commands::SessionRef { name: name() }));
        p.accepted(&stop);
        // (phase, queued stop) -> phase shown
        for (phase, shown) in
            [("Running", "Stopping"), ("Pending", "Stopping"), ("Completed", "Completed"), ("Stopped", "Stopped")]
        {
            let mut view = serde_json::json!({"metadata": {"name": "s1"}, "status": {"phase": phase}});
            p.overlay_session("team-a", None, &mut view);
            assert_eq!(view["status"]["phase"], shown, "{phase}");
            let mut other = serde_json::json!({"metadata": {"name": "s2"}, "status": {"phase": phase}});
            p.overlay_session("team-a", None, &mut other);
            assert_eq!(other["status"]["phase"], phase, "another session is not touched");
        }
        p.settled(stop.id);
        let mut view = serde_json::json!({"metadata": {"name": "s1"}, "status": {"phase": "Running"}});
        p.overlay_session("team-a", None, &mut view);
        assert_eq!(view["status"]["phase"], "Running");

        let delete = command("team-a", CommandBody::SessionDelete(events::commands::SessionRef { name: name() }));
        p.accepted(&delete);
        let deleting = p.deleting("team-a", None);
        assert!(deleting.contains("s1") && !deleting.contains("s2") && p.deleting("team-b", None).is_empty());
        // Queued before the project (of this name) was created: not this project's.
        assert!(p.deleting("team-a", Some(Utc::now() + chrono::Duration::seconds(1))).is_empty());

        let grant = command(
            "team-a",
            CommandBody::PermissionGrant(events::commands::PermissionGrant {
                subject_type: events::SubjectType::User,
                subject_name: events::SubjectName::new("bob").unwrap(),
                role: events::Role::View,
            }),
        );
        let revoke = command(
            "team-a",
            CommandBody::PermissionRevoke(events::commands::PermissionRevoke {
                subject_type: events::SubjectType::Group,
                subject_name: events::SubjectName::new("team").unwrap(),
            }),
        );
        p.accepted(&grant);
        p.accepted(&revoke);
        let mut rows = vec![serde_json::json!({"subjectType": "group", "subjectName": "team", "role": "edit"})];
        p.overlay_permissions("team-a", None, &mut rows);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0]["revoking"], true);
        assert_eq!(
            rows[1],
            serde_json::json!({"subjectType": "user", "subjectName": "bob", "role": "view", "pending": true})
        );
        let mut elsewhere = Vec::new();
        p.overlay_permissions("team-b", None, &mut elsewhere);
        assert!(elsewhere.is_empty());
    }

    #[test]
    fn only_changes_reads_show_are_announced() {
        let mut stop = create("team-a", "s1");
        stop.body = CommandBody::SessionStop(events::commands::SessionRef { name: SessionName::new("s1").unwrap() });
        assert!(queued_session(&stop).is_none());
        assert!(
            shows(CommandType::SessionCreate)
                && shows(CommandType::SessionStop)
                && !shows(CommandType::RunnerSecretPut)
                && !shows(CommandType::KeyCreate)
        );
        assert_eq!(
            announcement_subject("ambient.cmd.team-a.session.create").as_deref(),
            Some("ambient.accepted.team-a.session.create")
        );
        assert_eq!(announcement_subject("other.team-a"), None);
    }

    #[test]
    fn old_queued_creations_expire() {
        let p = Pending::default();
        let mut cmd = create("team-a", "old");
        cmd.time = Utc::now() - chrono::Duration::from_std(TTL + Duration::from_secs(1)).unwrap();
        p.accepted(&cmd);
        assert!(p.session("team-a", None, "old").is_none());
        p.expire();
        assert!(p.queued.read().unwrap().is_empty());
    }
}
