//! Permissions. USER grants are RoleBindings `ambient-permission-<role>-user-<subject>`.
//! GROUP grants have one source of truth, `ProjectSettings.spec.groupAccess`: the permission
//! commands for groups edit that list, and [`sync_group_bindings`] (also run by the
//! ProjectSettings controller) makes the RoleBindings `ambient-group-<role>-<group>` match it,
//! removing stale ones. So the two views can never disagree for long, whichever is edited.

use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

use events::commands::{PermissionGrant, PermissionRevoke};
use events::crd::{GroupAccess, PROJECT_SETTINGS_NAME, ProjectSettings};
use events::{Command, Role, SubjectName, SubjectType};

use super::{Applied, Delivery, ensure_project_settings, gone, managed_namespace, string_map};
use crate::error::ApplyError;
use crate::labels;

fn binding(ns: &str, name: &str, role: Role, ty: SubjectType, subject: &SubjectName) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(string_map([(labels::APP, labels::APP_PERMISSION)])),
            annotations: Some(string_map([
                (labels::SUBJECT_KIND, ty.as_str()),
                (labels::SUBJECT_NAME, subject.as_str()),
                (labels::ROLE, role.as_str()),
            ])),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.cluster_role().into(),
        },
        subjects: Some(vec![Subject {
            kind: ty.rbac_kind().into(),
            name: subject.to_string(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            namespace: None,
        }]),
    }
}

fn annotation<'a>(rb: &'a RoleBinding, key: &str) -> Option<&'a str> {
    rb.annotations().get(key).map(String::as_str)
}

fn is_subject(rb: &RoleBinding, ty: SubjectType, subject: &SubjectName) -> bool {
    annotation(rb, labels::SUBJECT_KIND) == Some(ty.as_str())
        && annotation(rb, labels::SUBJECT_NAME) == Some(subject.as_str())
}

async fn permission_bindings(api: &Api<RoleBinding>) -> Result<Vec<RoleBinding>, ApplyError> {
    let lp = ListParams::default().labels(&format!("{}={}", labels::APP, labels::APP_PERMISSION));
    Ok(api.list(&lp).await?.items)
}

pub async fn grant(client: &kube::Client, cmd: &Command, req: &PermissionGrant) -> Result<Applied, ApplyError> {
    let ns = cmd.project.as_str();
    managed_namespace(client, &cmd.project).await?;
    match req.subject_type {
        SubjectType::Group => {
            let ps = edit_group_access(client, ns, |list| {
                list.retain(|g| g.group_name != req.subject_name.as_str());
                list.push(GroupAccess { group_name: req.subject_name.to_string(), role: req.role });
            })
            .await?;
            sync_group_bindings(client, &ps).await?;
            Ok(Applied::of(&ps))
        }
        SubjectType::User => {
            let api = Api::<RoleBinding>::namespaced(client.clone(), ns);
            let name = labels::permission_binding(req.role, SubjectType::User, &req.subject_name);
            let mut rb = binding(ns, &name, req.role, SubjectType::User, &req.subject_name);
            rb.metadata.annotations.get_or_insert_default().insert(labels::LAST_COMMAND.into(), cmd.id.to_string());
            let rb = api.patch(&name, &PatchParams::apply(labels::FIELD_MANAGER).force(), &Patch::Apply(&rb)).await?;
            // A grant replaces the subject's other roles.
            for other in permission_bindings(&api).await? {
                if other.name_any() != name
                    && is_subject(&other, SubjectType::User, &req.subject_name)
                    && annotation(&other, labels::SOURCE).is_none()
                {
                    delete_ignoring_missing(&api, &other.name_any()).await?;
                }
            }
            Ok(Applied::of(&rb))
        }
    }
}

pub async fn revoke(
    client: &kube::Client,
    cmd: &Command,
    req: &PermissionRevoke,
    delivery: Delivery,
) -> Result<Applied, ApplyError> {
    let ns = cmd.project.as_str();
    managed_namespace(client, &cmd.project).await?;
    let api = Api::<RoleBinding>::namespaced(client.clone(), ns);
    let mut found = false;
    if req.subject_type == SubjectType::Group {
        let ps = ensure_project_settings(client, ns).await?;
        if ps.spec.group_access.iter().any(|g| g.group_name == req.subject_name.as_str()) {
            found = true;
            let ps = edit_group_access(client, ns, |list| list.retain(|g| g.group_name != req.subject_name.as_str()))
                .await?;
            sync_group_bindings(client, &ps).await?;
        }
    }
    // Every permission binding of the subject, whatever its role or origin.
    let mut last = None;
    for rb in permission_bindings(&api).await? {
        if is_subject(&rb, req.subject_type, &req.subject_name) {
            found = true;
            delete_ignoring_missing(&api, &rb.name_any()).await?;
            last = Some(rb);
        }
    }
    match (found, last, delivery) {
        (_, Some(rb), _) => Ok(Applied::of(&rb)),
        (true, None, _) | (false, None, Delivery::Redelivered) => Ok(gone::<RoleBinding>(Some(ns), "")),
        (false, None, Delivery::First) => Err(ApplyError::not_found(format!(
            "{} {} has no permission in project {}",
            req.subject_type, req.subject_name, cmd.project
        ))),
    }
}

async fn delete_ignoring_missing(api: &Api<RoleBinding>, name: &str) -> Result<(), ApplyError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Changes `groupAccess` with optimistic concurrency (a concurrent writer makes it retry).
async fn edit_group_access(
    client: &kube::Client,
    ns: &str,
    edit: impl FnOnce(&mut Vec<GroupAccess>),
) -> Result<ProjectSettings, ApplyError> {
    let mut ps = ensure_project_settings(client, ns).await?;
    edit(&mut ps.spec.group_access);
    let api = Api::<ProjectSettings>::namespaced(client.clone(), ns);
    Ok(api.replace(PROJECT_SETTINGS_NAME, &PostParams::default(), &ps).await?)
}

/// Makes the group RoleBindings of a project match its `groupAccess`: one binding per entry
/// (owned by the ProjectSettings), stale ones removed.
pub async fn sync_group_bindings(client: &kube::Client, ps: &ProjectSettings) -> Result<(), ApplyError> {
    let ns = ps.namespace().unwrap_or_default();
    let api = Api::<RoleBinding>::namespaced(client.clone(), &ns);
    let owner = ps.controller_owner_ref(&());
    let mut wanted = Vec::new();
    for entry in &ps.spec.group_access {
        let Ok(group) = SubjectName::new(entry.group_name.clone()) else {
            tracing::warn!(project = %ns, group = %entry.group_name, "skipping groupAccess entry with an unusable group name");
            continue;
        };
        let name = labels::group_binding(entry.role, &group);
        let mut rb = binding(&ns, &name, entry.role, SubjectType::Group, &group);
        rb.metadata
            .annotations
            .get_or_insert_default()
            .insert(labels::SOURCE.into(), labels::SOURCE_PROJECT_SETTINGS.into());
        rb.metadata.owner_references = owner.clone().map(|o| vec![o]);
        api.patch(&name, &PatchParams::apply(labels::FIELD_MANAGER).force(), &Patch::Apply(&rb)).await?;
        wanted.push(name);
    }
    for rb in permission_bindings(&api).await? {
        if annotation(&rb, labels::SOURCE) == Some(labels::SOURCE_PROJECT_SETTINGS) && !wanted.contains(&rb.name_any())
        {
            delete_ignoring_missing(&api, &rb.name_any()).await?;
        }
    }
    Ok(())
}
