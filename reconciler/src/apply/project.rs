//! Projects: a managed namespace, its display annotations, the creator's admin RoleBinding and
//! its ProjectSettings.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use events::commands::{ProjectCreate, ProjectUpdate};
use events::{Command, Principal, Role, SubjectName};

use super::{Applied, Delivery, gone, ensure_project_settings, is_managed, last_command, string_map};
use crate::error::ApplyError;
use crate::labels;

pub async fn create(client: &kube::Client, cmd: &Command, req: &ProjectCreate) -> Result<Applied, ApplyError> {
    let api = Api::<Namespace>::all(client.clone());
    let name = cmd.project.as_str();
    // Refused before any lookup, so that a create cannot probe system namespaces.
    cmd.project.check_creatable().map_err(|e| ApplyError::invalid(e.to_string()))?;
    let id = cmd.id.to_string();
    // One answer whoever holds the name (another tenant's project, a namespace that is not a
    // project, one being deleted): a create learns only that the name is taken.
    let taken = || ApplyError::conflict(format!("the project name {name} is not available"));
    let ns = match api.get_opt(name).await? {
        Some(ns) if last_command(&ns) == Some(id.as_str()) => ns,
        Some(_) => return Err(taken()),
        None => {
            let mut annotations = string_map([(labels::REQUESTER, cmd.principal.user.as_str()), (labels::LAST_COMMAND, &id)]);
            annotations.insert(labels::DISPLAY_NAME.into(), req.display_name.clone().unwrap_or_else(|| name.to_string()));
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
                Err(kube::Error::Api(s)) if s.code == 409 => return Err(taken()),
                Err(e) => return Err(e.into()),
            }
        }
    };
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
        Some((ns, sa)) => Subject { kind: "ServiceAccount".into(), name: sa.into(), namespace: Some(ns.into()), api_group: None },
        None => Subject {
            kind: "User".into(),
            name: principal.user.clone(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            namespace: None,
        },
    }
}

async fn ensure_creator_binding(client: &kube::Client, ns: &str, principal: &Principal, id: &str) -> Result<(), ApplyError> {
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
        .patch(cmd.project.as_str(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": annotations}})))
        .await?;
    Ok(Applied::of(&ns))
}

pub async fn delete(client: &kube::Client, cmd: &Command, delivery: Delivery) -> Result<Applied, ApplyError> {
    let api = Api::<Namespace>::all(client.clone());
    let ns = match api.get_opt(cmd.project.as_str()).await? {
        Some(ns) if is_managed(&ns) => ns,
        Some(_) => return Err(ApplyError::not_found(format!("project {} not found", cmd.project))),
        None if delivery == Delivery::Redelivered => return Ok(gone::<Namespace>(None, cmd.project.as_str())),
        None => return Err(ApplyError::not_found(format!("project {} not found", cmd.project))),
    };
    if ns.metadata.deletion_timestamp.is_none() {
        api.delete(cmd.project.as_str(), &DeleteParams::background()).await?;
    }
    Ok(Applied::of(&ns))
}
