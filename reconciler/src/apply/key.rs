//! Access keys: a ServiceAccount `ambient-key-<name>`, a RoleBinding to the key's role, and a
//! TokenRequest token of configurable lifetime, returned only sealed to the requesting api's
//! one-time key. Revoking deletes the ServiceAccount, which invalidates every token it issued.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

use events::Command;
use events::commands::{KeyCreate, KeyRevoke};

use super::{Applied, Delivery, gone, last_command, managed_namespace, string_map};
use crate::error::ApplyError;
use crate::labels;

pub async fn create(
    client: &kube::Client,
    cmd: &Command,
    req: &KeyCreate,
    default_seconds: i64,
) -> Result<Applied, ApplyError> {
    let ns = cmd.project.as_str();
    managed_namespace(client, &cmd.project).await?;
    let seconds = req.expiration_seconds.unwrap_or(default_seconds);
    KeyCreate::check_expiration(Some(seconds)).map_err(|e| ApplyError::invalid(e.to_string()))?;
    let id = cmd.id.to_string();
    let sa_name = labels::key_service_account(&req.name);
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let sa = match sas.get_opt(&sa_name).await? {
        Some(sa) if last_command(&sa) == Some(id.as_str()) => sa,
        Some(_) => return Err(ApplyError::conflict(format!("access key {} already exists", req.name))),
        None => {
            let mut annotations = string_map([
                (labels::KEY_NAME, req.name.as_str()),
                (labels::ROLE, req.role.as_str()),
                (labels::LAST_COMMAND, id.as_str()),
            ]);
            annotations
                .insert(labels::KEY_CREATED_AT.into(), cmd.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            if let Some(d) = &req.description {
                annotations.insert(labels::KEY_DESCRIPTION.into(), d.clone());
            }
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(sa_name.clone()),
                    namespace: Some(ns.into()),
                    labels: Some(string_map([(labels::APP, labels::APP_ACCESS_KEY)])),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                ..Default::default()
            };
            match sas.create(&PostParams::default(), &sa).await {
                Ok(sa) => sa,
                Err(e) if crate::error::already_exists(&e) => {
                    return Err(ApplyError::conflict(format!("access key {} already exists", req.name)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let rb = RoleBinding {
        metadata: ObjectMeta {
            name: Some(sa_name.clone()),
            namespace: Some(ns.into()),
            labels: Some(string_map([(labels::APP, labels::APP_ACCESS_KEY)])),
            annotations: Some(string_map([
                (labels::KEY_NAME, req.name.as_str()),
                (labels::SA_NAME, sa_name.as_str()),
                (labels::ROLE, req.role.as_str()),
                (labels::LAST_COMMAND, id.as_str()),
            ])),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: req.role.cluster_role().into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa_name.clone(),
            namespace: Some(ns.into()),
            api_group: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .patch(&sa_name, &PatchParams::apply(labels::FIELD_MANAGER).force(), &Patch::Apply(&rb))
        .await?;
    let tr = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(seconds), ..Default::default() },
        ..Default::default()
    };
    let tr = sas.create_token_request(&sa_name, &PostParams::default(), &tr).await?;
    let token = tr.status.map(|s| s.token).ok_or_else(|| ApplyError::retry("TokenRequest returned no token"))?;
    // The plaintext token exists only in this scope; only the sealed box leaves it.
    // A reply key the cipher refuses can never be answered: the command fails for good.
    let sealed = req
        .reply_key
        .seal(token.as_bytes())
        .map_err(|e| ApplyError::permanent(events::FailureReason::BadRequest, e.to_string()))?;
    Ok(Applied { resource: super::resource_ref(&sa), sealed_token: Some(sealed) })
}

pub async fn revoke(
    client: &kube::Client,
    cmd: &Command,
    req: &KeyRevoke,
    delivery: Delivery,
) -> Result<Applied, ApplyError> {
    let ns = cmd.project.as_str();
    managed_namespace(client, &cmd.project).await?;
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let not_found = || ApplyError::not_found(format!("access key {} not found", req.key_id));
    // Only access-key ServiceAccounts can be revoked this way, never other identities.
    let sa = if req.key_id.starts_with("ambient-key-") { sas.get_opt(&req.key_id).await? } else { None };
    let sa = match sa {
        Some(sa) if sa.labels().get(labels::APP).map(String::as_str) == Some(labels::APP_ACCESS_KEY) => sa,
        Some(_) => return Err(not_found()),
        None if delivery == Delivery::Redelivered && req.key_id.starts_with("ambient-key-") => {
            return Ok(gone::<ServiceAccount>(Some(ns), &req.key_id));
        }
        None => return Err(not_found()),
    };
    let rbs = Api::<RoleBinding>::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{}={}", labels::APP, labels::APP_ACCESS_KEY));
    for rb in rbs.list(&lp).await?.items {
        if rb.annotations().get(labels::SA_NAME) == Some(&req.key_id) {
            match rbs.delete(&rb.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    match sas.delete(&req.key_id, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Applied::of(&sa))
}
