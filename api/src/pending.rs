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
//! - every replica keeps those it shows (session creations: a Pending session with a message
//!   saying it is queued) until the command's result (`ambient.result.>`) or the cluster's own
//!   object replaces it, or [`TTL`] passes (a replica that starts later sees no earlier
//!   announcement: such a session shows once it is applied, as before).
//!
//! The reads ([`crate::reads::Reads`]) consult the overlay only where the cluster has nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// Whether commands of `ty` change what reads show while they wait (only those are announced).
pub fn shows(ty: CommandType) -> bool {
    ty == CommandType::SessionCreate
}

/// The announcement subject of a command published on `subject` (`ambient.cmd.…`).
pub fn announcement_subject(command_subject: &str) -> Option<String> {
    command_subject.strip_prefix(events::subjects::COMMANDS).map(|rest| format!("{ACCEPTED}{rest}"))
}

/// The session a queued creation shows as: phase Pending, a message saying it is queued, the
/// requested spec, created at the command's time (pure).
pub fn queued_session(cmd: &Command) -> Option<AgenticSession> {
    let CommandBody::SessionCreate(c) = &cmd.body else { return None };
    let mut s = AgenticSession::new(c.name.as_str(), c.spec.clone());
    s.metadata = ObjectMeta {
        name: Some(c.name.to_string()),
        namespace: Some(cmd.project.to_string()),
        creation_timestamp: k8s_openapi::jiff::Timestamp::from_millisecond(cmd.time.timestamp_millis()).ok().map(Time),
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
    session: Arc<AgenticSession>,
}

/// The overlay.
#[derive(Default)]
pub struct Pending {
    /// Queued session creations by (project, session).
    sessions: RwLock<BTreeMap<(String, String), Queued>>,
    /// Recently settled command ids, oldest first.
    settled: RwLock<(VecDeque<Uuid>, HashMap<Uuid, ()>)>,
}

impl Pending {
    /// Notes an accepted command.
    pub fn accepted(&self, cmd: &Command) {
        let Some(session) = queued_session(cmd) else { return };
        if self.settled.read().is_ok_and(|s| s.1.contains_key(&cmd.id)) {
            return;
        }
        if let Ok(mut m) = self.sessions.write() {
            let key = (cmd.project.to_string(), session.metadata.name.clone().unwrap_or_default());
            m.insert(key, Queued { command: cmd.id, at: cmd.time, session: Arc::new(session) });
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
        if let Ok(mut m) = self.sessions.write() {
            m.retain(|_, q| q.command != id);
        }
    }

    fn live(q: &Queued, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(q.at).to_std().is_ok_and(|age| age < TTL) || q.at > now
    }

    /// The queued creation of `project/name`, if one shows.
    pub fn session(&self, project: &str, name: &str) -> Option<Arc<AgenticSession>> {
        let m = self.sessions.read().ok()?;
        let q = m.get(&(project.to_string(), name.to_string()))?;
        Self::live(q, Utc::now()).then(|| q.session.clone())
    }

    /// The queued creations of `project`.
    pub fn sessions_of(&self, project: &str) -> Vec<Arc<AgenticSession>> {
        let now = Utc::now();
        let Ok(m) = self.sessions.read() else { return Vec::new() };
        m.range((project.to_string(), String::new())..)
            .take_while(|((p, _), _)| p == project)
            .filter(|(_, q)| Self::live(q, now))
            .map(|(_, q)| q.session.clone())
            .collect()
    }

    /// Drops what expired.
    fn expire(&self) {
        let now = Utc::now();
        if let Ok(mut m) = self.sessions.write() {
            m.retain(|_, q| Self::live(q, now));
        }
    }
}

/// Feeds `pending` from the announcements and results until `stop`.
pub async fn run(nats: async_nats::Client, verifier: CommandVerifier, pending: Arc<Pending>, stop: CancellationToken) {
    let subscribe = |subject: String| {
        let nats = nats.clone();
        async move { nats.subscribe(subject).await }
    };
    let (announced, results) = match tokio::try_join!(subscribe(format!("{ACCEPTED}.>")), subscribe(format!("{}.>", events::subjects::RESULTS))) {
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
        let body = CommandBody::SessionCreate(SessionCreate { name: SessionName::new(name).unwrap(), spec });
        Command::new(ProjectName::new(project).unwrap(), Principal { user: "alice".into(), ..Default::default() }, body)
    }

    #[test]
    fn a_queued_creation_shows_as_a_pending_session_until_its_result() {
        let p = Pending::default();
        let cmd = create("team-a", "s1");
        p.accepted(&cmd);
        p.accepted(&create("team-b", "s2"));
        let s = p.session("team-a", "s1").expect("shown");
        assert_eq!(s.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(s.status.as_ref().and_then(|st| st.phase), Some(Phase::Pending));
        assert!(s.status.as_ref().and_then(|st| st.message.clone()).is_some_and(|m| m.contains(&cmd.id.to_string())));
        assert_eq!(s.spec.prompt, "hi");
        assert!(s.metadata.uid.is_none(), "no uid until the cluster has it");
        assert_eq!(p.sessions_of("team-a").len(), 1);
        assert!(p.sessions_of("team").is_empty(), "a prefix of a project is another project");
        p.settled(cmd.id);
        assert!(p.session("team-a", "s1").is_none());
        // An announcement that arrives after its result shows nothing.
        p.accepted(&cmd);
        assert!(p.session("team-a", "s1").is_none());
        assert_eq!(p.sessions_of("team-b").len(), 1);
    }

    #[test]
    fn only_creations_are_shown_and_announced() {
        let mut stop = create("team-a", "s1");
        stop.body = CommandBody::SessionStop(events::commands::SessionRef { name: SessionName::new("s1").unwrap() });
        assert!(queued_session(&stop).is_none());
        assert!(shows(CommandType::SessionCreate) && !shows(CommandType::SessionStop));
        assert_eq!(announcement_subject("ambient.cmd.team-a.session.create").as_deref(), Some("ambient.accepted.team-a.session.create"));
        assert_eq!(announcement_subject("other.team-a"), None);
    }

    #[test]
    fn old_queued_creations_expire() {
        let p = Pending::default();
        let mut cmd = create("team-a", "old");
        cmd.time = Utc::now() - chrono::Duration::from_std(TTL + Duration::from_secs(1)).unwrap();
        p.accepted(&cmd);
        assert!(p.session("team-a", "old").is_none());
        p.expire();
        assert!(p.sessions.read().unwrap().is_empty());
    }
}
