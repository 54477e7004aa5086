//! Projects: a managed namespace, its display annotations, the creator's admin RoleBinding and
//! its ProjectSettings.
//!
//! **The per-user project quota** is decided here, at apply time, and holds under any number of
//! parallel creates on any number of replicas (creates of different projects run in parallel, in
//! different partitions). A user's creates serialize on one key of the `ambient-project-claims`
//! bucket: a create reads the user's claims (revision r), then lists the user's projects, counts
//! both, and records its own claim with a compare-and-set on revision r before it creates the
//! namespace; it releases the claim once the namespace exists. A create that misses another's
//! project saw neither its claim (so that claim was written after r, and this CAS fails and
//! retries) nor its namespace (so the claim was released before r, after the namespace was
//! created, which the list then shows). A claim whose namespace never appeared (a crashed
//! reconciler) stops counting after [`CLAIM_TTL`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use events::commands::{ProjectCreate, ProjectUpdate};
use events::{Command, FailureReason, Principal, Role, SubjectName};

use events::views::is_project;

use super::{Applied, Delivery, ensure_project_settings, gone, last_command, string_map};
use crate::error::ApplyError;
use crate::labels;

/// How long a claim counts against the quota while its namespace does not exist.
pub const CLAIM_TTL: Duration = Duration::from_secs(10 * 60);
/// Compare-and-set attempts before a create gives up for now (transient: retried).
const CLAIM_ATTEMPTS: u32 = 50;

/// The per-user project quota and where its claims are kept.
#[derive(Clone)]
pub struct ProjectQuota {
    /// Most projects one user may have requested.
    pub quota: usize,
    /// The `ambient-project-claims` bucket.
    pub claims: kv::Store,
}

/// One user's claims: project name → when it was claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user (the key is derived from it).
    pub user: String,
    /// Projects being created.
    pub claims: BTreeMap<String, DateTime<Utc>>,
}

/// The claims key of `user`: every byte outside `[A-Za-z0-9_-]` is written `=XX`, so distinct
/// users never share a key and every key is a valid KV key.
pub fn claims_key(user: &str) -> String {
    let mut k = String::from("u.");
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            k.push(b as char);
        } else {
            k.push_str(&format!("={b:02X}"));
        }
    }
    k
}

/// Decides a create of `project` by a user who has the projects `existing` (requested by them,
/// from the API server) and the claims `claims`: the claims to store (expired ones dropped, this
/// one added), or how many projects the user already holds.
pub fn decide(
    existing: &BTreeSet<String>,
    claims: &BTreeMap<String, DateTime<Utc>>,
    project: &str,
    now: DateTime<Utc>,
    quota: usize,
) -> Result<BTreeMap<String, DateTime<Utc>>, usize> {
    let ttl = chrono::Duration::from_std(CLAIM_TTL).unwrap_or(chrono::Duration::MAX);
    let live: BTreeMap<String, DateTime<Utc>> = claims
        .iter()
        .filter(|(p, at)| p.as_str() != project && now - **at < ttl)
        .map(|(p, at)| (p.clone(), *at))
        .collect();
    let held: BTreeSet<&str> =
        existing.iter().map(String::as_str).chain(live.keys().map(String::as_str)).filter(|p| *p != project).collect();
    if held.len() >= quota {
        return Err(held.len());
    }
    let mut next = live;
    next.insert(project.to_string(), now);
    Ok(next)
}

fn bus(e: impl Into<crate::error::Cause>) -> ApplyError {
    ApplyError::transient("project-quota claims", e)
}

/// The user's claims and their revision (0: no entry yet).
async fn read_claims(store: &kv::Store, key: &str) -> Result<(Claims, u64), ApplyError> {
    match store.entry(key).await.map_err(bus)? {
        Some(e) if e.operation == kv::Operation::Put => {
            Ok((serde_json::from_slice(&e.value).unwrap_or_default(), e.revision))
        }
        Some(e) => Ok((Claims::default(), e.revision)),
        None => Ok((Claims::default(), 0)),
    }
}

/// Writes `claims` if the entry is still at `revision`; false when someone else wrote first.
async fn write_claims(store: &kv::Store, key: &str, claims: &Claims, revision: u64) -> Result<bool, ApplyError> {
    let value = serde_json::to_vec(claims).map_err(bus)?;
    if revision == 0 {
        return match store.create(key, value.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(bus(e)),
        };
    }
    match store.update(key, value.into(), revision).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(bus(e)),
    }
}

/// Claims one project of the user's quota, or refuses with `LimitReached` (429).
async fn claim(client: &kube::Client, q: &ProjectQuota, user: &str, project: &str) -> Result<(), ApplyError> {
    let key = claims_key(user);
    for attempt in 0..CLAIM_ATTEMPTS {
        // Claims first, then the namespaces: see the module documentation.
        let (mut claims, revision) = read_claims(&q.claims, &key).await?;
        let managed = Api::<Namespace>::all(client.clone())
            .list_metadata(&ListParams::default().labels(&format!("{}=true", labels::MANAGED)))
            .await?;
        let existing: BTreeSet<String> = managed
            .items
            .iter()
            .filter(|ns| {
                ns.metadata.annotations.as_ref().and_then(|a| a.get(labels::REQUESTER)).map(String::as_str)
                    == Some(user)
            })
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        match decide(&existing, &claims.claims, project, Utc::now(), q.quota) {
            Err(held) => {
                return Err(ApplyError::permanent(
                    FailureReason::LimitReached,
                    format!("project quota of {} reached ({held} projects)", q.quota),
                ));
            }
            Ok(next) => {
                claims.user = user.to_string();
                claims.claims = next;
                if write_claims(&q.claims, &key, &claims, revision).await? {
                    return Ok(());
                }
            }
        }
        // Another create of the same user won the race: read again, after a pause that grows
        // with contention.
        tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1))).await;
    }
    Err(ApplyError::retry("project-quota claims are contended"))
}

/// Drops the user's claim on `project` (best effort: an unreleased claim expires).
async fn release(q: &ProjectQuota, user: &str, project: &str) {
    let key = claims_key(user);
    for _ in 0..CLAIM_ATTEMPTS {
        let Ok((mut claims, revision)) = read_claims(&q.claims, &key).await else { break };
        if claims.claims.remove(project).is_none() {
            return;
        }
        match write_claims(&q.claims, &key, &claims, revision).await {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => break,
        }
    }
    tracing::warn!(project, "could not release the project-quota claim; it expires on its own");
}

pub async fn create(
    client: &kube::Client,
    cmd: &Command,
    req: &ProjectCreate,
    quota: &ProjectQuota,
) -> Result<Applied, ApplyError> {
    let api = Api::<Namespace>::all(client.clone());
    let name = cmd.project.as_str();
    // Refused before any lookup, so that a create cannot probe system namespaces.
    cmd.project.check_creatable().map_err(|e| ApplyError::invalid(e.to_string()))?;
    let id = cmd.id.to_string();
    // One answer whoever holds the name (another tenant's project, a namespace that is not a
    // project, one being deleted): a create learns only that the name is taken.
    let taken = || ApplyError::conflict(format!("the project name {name} is not available"));
    let user = cmd.principal.user.as_str();
    let ns = match api.get_opt(name).await? {
        Some(ns) if last_command(&ns) == Some(id.as_str()) => ns,
        Some(_) => return Err(taken()),
        None => {
            claim(client, quota, user, name).await?;
            let mut annotations =
                string_map([(labels::REQUESTER, cmd.principal.user.as_str()), (labels::LAST_COMMAND, &id)]);
            annotations
                .insert(labels::DISPLAY_NAME.into(), req.display_name.clone().unwrap_or_else(|| name.to_string()));
            if let Some(d) = &req.description {
                annotations.insert(labels::DESCRIPTION.into(), d.clone());
            }
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(string_map([(labels::MANAGED, "true")])),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &ns).await {
                Ok(ns) => ns,
                Err(e) if crate::error::already_exists(&e) => {
                    release(quota, user, name).await;
                    return Err(taken());
                }
                // Transient: the claim stays for the retry (which finds it its own).
                Err(e) => return Err(e.into()),
            }
        }
    };
    // The namespace exists (and counts): the claim has done its work.
    release(quota, user, name).await;
    if ns.metadata.deletion_timestamp.is_some() {
        return Err(taken());
    }
    ensure_creator_binding(client, name, &cmd.principal, &id).await?;
    ensure_project_settings(client, name).await?;
    Ok(Applied::of(&ns))
}

/// The RBAC subject of a principal: a ServiceAccount for `system:serviceaccount:ns:name`.
pub fn rbac_subject(principal: &Principal) -> Subject {
    match principal.service_account() {
        Some((ns, sa)) => {
            Subject { kind: "ServiceAccount".into(), name: sa.into(), namespace: Some(ns.into()), api_group: None }
        }
        None => Subject {
            kind: "User".into(),
            name: principal.user.clone(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            namespace: None,
        },
    }
}

async fn ensure_creator_binding(
    client: &kube::Client,
    ns: &str,
    principal: &Principal,
    id: &str,
) -> Result<(), ApplyError> {
    let subject_name =
        SubjectName::new(principal.user.clone()).map_err(|e| ApplyError::invalid(format!("principal: {e}")))?;
    let name = labels::creator_binding(&subject_name);
    let rb = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.into()),
            labels: Some(string_map([(labels::APP, labels::APP_PERMISSION)])),
            annotations: Some(string_map([
                (labels::SUBJECT_KIND, "user"),
                (labels::SUBJECT_NAME, principal.user.as_str()),
                (labels::ROLE, Role::Admin.as_str()),
                (labels::LAST_COMMAND, id),
            ])),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: Role::Admin.cluster_role().into(),
        },
        subjects: Some(vec![rbac_subject(principal)]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .patch(&name, &PatchParams::apply(labels::FIELD_MANAGER).force(), &Patch::Apply(&rb))
        .await?;
    Ok(())
}

pub async fn update(client: &kube::Client, cmd: &Command, req: &ProjectUpdate) -> Result<Applied, ApplyError> {
    super::managed_namespace(client, &cmd.project).await?;
    let mut annotations = serde_json::Map::new();
    annotations.insert(labels::LAST_COMMAND.into(), json!(cmd.id.to_string()));
    if let Some(d) = &req.display_name {
        annotations.insert(labels::DISPLAY_NAME.into(), json!(d));
    }
    if let Some(d) = &req.description {
        annotations.insert(labels::DESCRIPTION.into(), json!(d));
    }
    let ns = Api::<Namespace>::all(client.clone())
        .patch(
            cmd.project.as_str(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await?;
    Ok(Applied::of(&ns))
}

pub async fn delete(client: &kube::Client, cmd: &Command, delivery: Delivery) -> Result<Applied, ApplyError> {
    let api = Api::<Namespace>::all(client.clone());
    let ns = match api.get_opt(cmd.project.as_str()).await? {
        Some(ns) if is_project(&ns) => ns,
        Some(_) => return Err(ApplyError::not_found(format!("project {} not found", cmd.project))),
        None if delivery == Delivery::Redelivered => return Ok(gone::<Namespace>(None, cmd.project.as_str())),
        None => return Err(ApplyError::not_found(format!("project {} not found", cmd.project))),
    };
    if ns.metadata.deletion_timestamp.is_none() {
        api.delete(cmd.project.as_str(), &DeleteParams::background()).await?;
    }
    Ok(Applied::of(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quota_decisions() {
        let now = Utc::now();
        let fresh = now - chrono::Duration::seconds(5);
        let stale = now - chrono::Duration::from_std(CLAIM_TTL).unwrap() - chrono::Duration::seconds(1);
        let claims =
            |v: &[(&str, DateTime<Utc>)]| v.iter().map(|(p, t)| (p.to_string(), *t)).collect::<BTreeMap<_, _>>();
        // (what, existing, claims, quota, expected: Ok(claims after) or Err(held))
        type Case<'a> =
            (&'a str, BTreeSet<String>, BTreeMap<String, DateTime<Utc>>, usize, Result<Vec<&'a str>, usize>);
        let cases: Vec<Case> = vec![
            ("empty", set(&[]), claims(&[]), 2, Ok(vec!["new"])),
            ("under quota", set(&["a"]), claims(&[]), 2, Ok(vec!["new"])),
            ("at quota by projects", set(&["a", "b"]), claims(&[]), 2, Err(2)),
            ("at quota by a create in flight", set(&["a"]), claims(&[("b", fresh)]), 2, Err(2)),
            (
                "a claim whose namespace exists counts once",
                set(&["a"]),
                claims(&[("a", fresh)]),
                2,
                Ok(vec!["a", "new"]),
            ),
            (
                "an expired claim no longer counts and is dropped",
                set(&["a"]),
                claims(&[("b", stale)]),
                2,
                Ok(vec!["new"]),
            ),
            (
                "its own earlier claim (a redelivery) does not count",
                set(&["a"]),
                claims(&[("new", fresh)]),
                2,
                Ok(vec!["new"]),
            ),
            ("its own namespace does not count", set(&["new"]), claims(&[]), 1, Ok(vec!["new"])),
            ("quota zero", set(&[]), claims(&[]), 0, Err(0)),
        ];
        for (what, existing, held, quota, want) in cases {
            let got = decide(&existing, &held, "new", now, quota).map(|c| c.keys().cloned().collect::<Vec<_>>());
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn claim_keys_are_distinct_and_valid() {
        let users = ["alice", "Alice", "a.b", "a=2Eb", "a@example.com", "system:serviceaccount:p:k", "ü"];
        let keys: BTreeSet<String> = users.iter().map(|u| claims_key(u)).collect();
        assert_eq!(keys.len(), users.len());
        for k in keys {
            assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)), "{k}");
        }
    }
}
