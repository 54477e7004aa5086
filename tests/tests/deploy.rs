//! `deploy/`: every overlay renders with the dev cluster's kubectl, every rendered object is
//! accepted by a real API server (server-side dry-run), the components' RBAC is least
//! privilege (and the reconciler's writes confined to projects by an admission policy), the
//! manifests keep the restricted security profile, and the NATS accounts file
//! really enforces who may publish, consume and write what (against a real nats-server).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use async_nats::jetstream::{self, consumer, kv, stream};
use events::streams::{self, BusConfig};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use ambient_tests::components::{DeployNats, RECONCILER_CONFINEMENT, apply_rbac, nats_server_bin, wait_for};
use ambient_tests::{DemoUser, TestEnv, repo_dir};

/// Every installable directory under deploy/ (kustomization roots).
const ROOTS: &[&str] = &[
    "deploy",
    "deploy/overlays/dev",
    "deploy/overlays/openshift",
    "deploy/overlays/production",
    "deploy/overlays/openshift-production",
];

/// Kinds the dev cluster does not serve (OpenShift APIs): skipped in the dry-run, by
/// `apiVersion/kind`, and only after the test has seen that the server indeed lacks them.
const OPENSHIFT_ONLY: &[&str] = &["route.openshift.io/v1/Route"];

/// The three project ClusterRoles: the only roles a component may `bind`.
const PROJECT_ROLES: &[&str] = &["ambient-project-admin", "ambient-project-edit", "ambient-project-view"];

const COMPONENTS: &[&str] = &["api", "reconciler", "projector"];

fn kubectl(env: &TestEnv) -> anyhow::Result<(PathBuf, PathBuf)> {
    let kubectl = env.kubectl().ok_or_else(|| anyhow!("the dev cluster's kubectl is not known (AMBIENT_BIN_DIR)"))?;
    let kubeconfig =
        env.kubeconfig(DemoUser::Admin).ok_or_else(|| anyhow!("no admin kubeconfig (AMBIENT_KUBECONFIG_DIR)"))?;
    Ok((kubectl, kubeconfig))
}

/// `kubectl kustomize <root>`, parsed into objects.
async fn render(kubectl: &Path, root: &str) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(repo_dir().join(root))
        .output()
        .await
        .context("running kubectl kustomize")?;
    ensure!(out.status.success(), "kubectl kustomize {root} failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    parse_yaml(&text).with_context(|| format!("parsing the rendering of {root}"))
}

fn parse_yaml(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn kind_key(o: &Value) -> String {
    format!("{}/{}", o["apiVersion"].as_str().unwrap_or(""), o["kind"].as_str().unwrap_or(""))
}

fn name_of(o: &Value) -> String {
    format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

// ---- (a) + (b): render, and a real API server accepts every object -----------------------

#[tokio::test]
async fn every_overlay_renders_and_the_api_server_accepts_every_object() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let (kubectl, kubeconfig) = kubectl(&env)?;
    // The namespace (and the RBAC the other tests use) must exist for namespaced dry-runs.
    apply_rbac(&env).await?;

    // The kinds skipped below are really absent from the dev API server.
    for key in OPENSHIFT_ONLY {
        let (group_version, kind) = key.rsplit_once('/').expect("apiVersion/kind");
        let out = Command::new(&kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["api-resources", "--api-group"])
            .arg(group_version.split('/').next().unwrap_or(""))
            .args(["-o", "name"])
            .output()
            .await?;
        ensure!(out.status.success(), "kubectl api-resources failed");
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "the dev cluster serves {kind}; stop skipping it"
        );
    }

    for root in ROOTS {
        let objects = render(&kubectl, root).await?;
        ensure!(!objects.is_empty(), "{root} renders nothing");

        let (skipped, accepted): (Vec<Value>, Vec<Value>) =
            objects.into_iter().partition(|o| OPENSHIFT_ONLY.contains(&kind_key(o).as_str()));
        let skipped: Vec<String> = skipped.iter().map(name_of).collect();
        let expected: Vec<String> = if root.contains("openshift") { vec!["Route/ambient-api".into()] } else { vec![] };
        assert_eq!(skipped, expected, "{root}: objects skipped because the dev cluster lacks their kind");
        eprintln!("{root}: {} objects; skipped (kind not served by the dev cluster): {skipped:?}", accepted.len());

        let list = json!({"apiVersion": "v1", "kind": "List", "items": accepted});
        let mut child = Command::new(&kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["apply", "--server-side", "--dry-run=server", "--field-manager=deploy-test", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(&serde_json::to_vec(&list)?).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "{root}: the API server refused objects:\n{}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let applied = stdout.lines().filter(|l| l.contains("(server dry run)")).count();
        assert_eq!(
            applied,
            list["items"].as_array().map_or(0, Vec::len),
            "{root}: every object dry-applied:\n{stdout}"
        );
    }
    Ok(())
}

// ---- shape of the rendered workloads ----------------------------------------------------------

fn pod_spec(o: &Value) -> &Value {
    &o["spec"]["template"]["spec"]
}

/// Violations of the restricted profile, probes and resources in one rendered workload.
fn workload_violations(o: &Value, fixed_ids: bool) -> Vec<String> {
    let mut v = Vec::new();
    let name = name_of(o);
    let pod = pod_spec(o);
    let psc = &pod["securityContext"];
    if psc["seccompProfile"]["type"] != "RuntimeDefault" {
        v.push(format!("{name}: seccompProfile is not RuntimeDefault"));
    }
    if psc["runAsNonRoot"] != true {
        v.push(format!("{name}: runAsNonRoot is not set"));
    }
    if fixed_ids != psc.get("runAsUser").is_some() {
        v.push(format!("{name}: runAsUser present={} (want {fixed_ids})", psc.get("runAsUser").is_some()));
    }
    for c in pod["containers"].as_array().into_iter().flatten() {
        let cn = format!("{name}/{}", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != false {
            v.push(format!("{cn}: allowPrivilegeEscalation is not false"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            v.push(format!("{cn}: readOnlyRootFilesystem is not true"));
        }
        if strs(&sc["capabilities"]["drop"]) != ["ALL"] || sc["capabilities"].get("add").is_some() {
            v.push(format!("{cn}: capabilities are not exactly drop ALL"));
        }
        if sc.get("privileged") == Some(&Value::Bool(true)) || sc.get("runAsUser") == Some(&json!(0)) {
            v.push(format!("{cn}: privileged or root"));
        }
        if c["resources"]["requests"].get("memory").is_none() || c["resources"]["limits"].get("memory").is_none() {
            v.push(format!("{cn}: no memory request/limit"));
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            if c.get(probe).is_none() {
                v.push(format!("{cn}: no {probe}"));
            }
        }
    }
    v
}

/// The container `name` of a workload (sidecars may come first).
fn container<'a>(o: &'a Value, name: &str) -> &'a Value {
    pod_spec(o)["containers"].as_array().into_iter().flatten().find(|c| c["name"] == name).unwrap_or(&Value::Null)
}

/// The port number and path of an HTTP probe of a container.
fn probe_of(c: &Value, probe: &str) -> (String, String) {
    let port_name = c[probe]["httpGet"]["port"].as_str().unwrap_or("").to_string();
    let port = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == port_name.as_str())
        .map(|p| p["containerPort"].to_string())
        .unwrap_or_default();
    (port, c[probe]["httpGet"]["path"].as_str().unwrap_or("").to_string())
}

fn arg_value<'a>(c: &'a Value, flag: &str) -> Option<&'a str> {
    strs(&c["args"]).into_iter().find_map(|a| a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')))
}

#[tokio::test]
async fn workloads_are_restricted_probed_and_scaled_per_overlay() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let (kubectl, _) = kubectl(&env)?;
    for root in ROOTS {
        let objects = render(&kubectl, root).await?;
        let by_name: BTreeMap<String, &Value> = objects.iter().map(|o| (name_of(o), o)).collect();
        let openshift = root.contains("openshift");
        let production = root.contains("production");
        let mut violations = Vec::new();
        for o in &objects {
            if matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
                violations.extend(workload_violations(o, !openshift));
            }
        }
        assert!(violations.is_empty(), "{root}:\n{}", violations.join("\n"));

        for c in COMPONENTS {
            let d = by_name
                .get(&format!("Deployment/ambient-{c}"))
                .ok_or_else(|| anyhow!("{root}: no Deployment ambient-{c}"))?;
            assert_eq!(
                pod_spec(d)["serviceAccountName"],
                format!("ambient-{c}"),
                "{root}: {c} runs under its own ServiceAccount"
            );
            let main = container(d, c);
            ensure!(!main.is_null(), "{root}: Deployment ambient-{c} has no container {c}");
            assert_eq!(probe_of(main, "livenessProbe"), ("9090".into(), "/healthz".into()), "{root}: {c} liveness");
            assert_eq!(probe_of(main, "readinessProbe"), ("9090".into(), "/readyz".into()), "{root}: {c} readiness");
            assert_eq!(arg_value(main, "--health-addr"), Some("0.0.0.0:9090"), "{root}: {c} health address");
            let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
            let want = match (production, *c) {
                (false, _) => 1,
                (true, "api") => 3,
                (true, _) => 2,
            };
            assert_eq!(replicas, want, "{root}: replicas of {c}");
        }
        let nats = by_name.get("StatefulSet/ambient-nats").ok_or_else(|| anyhow!("{root}: no NATS StatefulSet"))?;
        assert_eq!(nats["spec"]["replicas"].as_i64(), Some(if production { 3 } else { 1 }), "{root}: NATS servers");
        let conf = objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("ambient-nats-config"))
            })
            .ok_or_else(|| anyhow!("{root}: no NATS ConfigMap"))?;
        let nats_conf = conf["data"]["nats.conf"].as_str().unwrap_or("");
        ensure!(nats_conf.contains("sync_interval: always"), "{root}: NATS must fsync before acknowledging");
        ensure!(
            conf["data"]["accounts.conf"].as_str().is_some_and(|a| a.contains("ambient.cmd.>")),
            "{root}: accounts.conf in the ConfigMap"
        );
        ensure!(nats_conf.contains("cluster {") == production, "{root}: NATS clustered iff production");
        if openshift {
            let api = by_name["Deployment/ambient-api"];
            let proxy = container(api, "oauth-proxy");
            ensure!(!proxy.is_null(), "{root}: no oauth-proxy sidecar");
            let args = strs(&proxy["args"]);
            ensure!(args.contains(&"--pass-access-token"), "{root}: the proxy forwards the access token");
            ensure!(args.contains(&"--upstream=http://localhost:8080"), "{root}: the proxy fronts the api");
            ensure!(by_name.contains_key("Route/ambient-api"), "{root}: a Route");
        }
    }
    Ok(())
}

// ---- (c) privilege surface ------------------------------------------------------------------

/// Every way an RBAC object in deploy/ exceeds least privilege (SPEC §5).
fn rbac_violations(objects: &[Value]) -> Vec<String> {
    let mut v = Vec::new();
    let defined: BTreeSet<String> = objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or("")))
        .collect();
    for o in objects {
        let name = name_of(o);
        match o["kind"].as_str() {
            Some("ClusterRole" | "Role") => {
                if o.get("aggregationRule").is_some() {
                    v.push(format!("{name}: aggregationRule (its rules are not in deploy/)"));
                }
                for (i, rule) in o["rules"].as_array().into_iter().flatten().enumerate() {
                    let at = format!("{name} rule {i}");
                    for field in ["verbs", "resources", "apiGroups", "nonResourceURLs", "resourceNames"] {
                        if strs(&rule[field]).iter().any(|s| s.contains('*')) {
                            v.push(format!("{at}: wildcard in {field}"));
                        }
                    }
                    let verbs = strs(&rule["verbs"]);
                    for bad in ["impersonate", "escalate"] {
                        if verbs.contains(&bad) {
                            v.push(format!("{at}: {bad}"));
                        }
                    }
                    if verbs.contains(&"bind") {
                        let names = strs(&rule["resourceNames"]);
                        let resources = strs(&rule["resources"]);
                        if names.is_empty() || names.iter().any(|n| !PROJECT_ROLES.contains(n)) {
                            v.push(format!("{at}: bind beyond the project ClusterRoles ({names:?})"));
                        }
                        if resources != ["clusterroles"] || strs(&rule["apiGroups"]) != ["rbac.authorization.k8s.io"] {
                            v.push(format!("{at}: bind on {resources:?}, not only clusterroles"));
                        }
                    }
                }
            }
            Some("ClusterRoleBinding" | "RoleBinding") => {
                let role = o["roleRef"]["name"].as_str().unwrap_or("");
                let role_kind = o["roleRef"]["kind"].as_str().unwrap_or("");
                if matches!(role, "cluster-admin" | "admin" | "edit") || role.starts_with("system:") {
                    v.push(format!("{name}: binds the built-in role {role}"));
                } else if !defined.contains(&format!("{role_kind}/{role}")) {
                    v.push(format!("{name}: binds {role_kind} {role}, which deploy/ does not define"));
                }
                for s in o["subjects"].as_array().into_iter().flatten() {
                    let subject = s["name"].as_str().unwrap_or("");
                    if s["kind"] == "Group" && subject.starts_with("system:") {
                        v.push(format!("{name}: binds the group {subject}"));
                    }
                }
            }
            _ => {}
        }
    }
    v
}

#[test]
fn the_privilege_check_catches_every_violation() {
    let bad = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bad}
rules:
  - {apiGroups: [""], resources: ["pods"], verbs: ["*"]}
  - {apiGroups: ["*"], resources: ["pods"], verbs: ["get"]}
  - {apiGroups: [""], resources: ["*"], verbs: ["get"]}
  - {apiGroups: [""], resources: ["users", "groups"], verbs: ["impersonate"]}
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["clusterroles"], verbs: ["escalate"]}
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["clusterroles"], verbs: ["bind"]}
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["clusterroles"], verbs: ["bind"], resourceNames: ["ambient-project-admin", "cluster-admin"]}
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["roles"], verbs: ["bind"], resourceNames: ["ambient-project-view"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: to-cluster-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: ServiceAccount, name: x, namespace: ambient-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: to-unknown}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: somewhere-else}
subjects: [{kind: Group, name: "system:authenticated"}]
"#;
    let v = rbac_violations(&parse_yaml(bad).unwrap());
    for expect in [
        "rule 0: wildcard in verbs",
        "rule 1: wildcard in apiGroups",
        "rule 2: wildcard in resources",
        "rule 3: impersonate",
        "rule 4: escalate",
        "rule 5: bind beyond",
        "rule 6: bind beyond",
        "rule 7: bind on",
        "to-cluster-admin: binds the built-in role cluster-admin",
        "to-unknown: binds ClusterRole somewhere-else",
        "to-unknown: binds the group system:authenticated",
    ] {
        assert!(v.iter().any(|x| x.contains(expect)), "missed {expect:?} in {v:#?}");
    }
    assert_eq!(v.len(), 11, "{v:#?}");
    // A correct reconciler-style role passes.
    let good = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: good}
rules:
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["clusterroles"], verbs: ["bind"], resourceNames: ["ambient-project-admin", "ambient-project-edit", "ambient-project-view"]}
"#;
    assert_eq!(rbac_violations(&parse_yaml(good).unwrap()), Vec::<String>::new());
}

/// Reads of the reconciler's ClusterRole: exactly those its code makes (watch caches, GETs).
/// Admission cannot confine reads, so each one here is one someone needs; a cluster-wide read
/// of Secrets or pods (whose environment may hold credentials) is never among them.
const RECONCILER_READS: &[(&str, &[&str])] = &[
    ("namespaces", &["get", "list", "watch"]),
    ("vteam.ambient-code/agenticsessions", &["get", "list", "watch"]),
    ("vteam.ambient-code/projectsettings", &["get", "list", "watch"]),
    ("rbac.authorization.k8s.io/rolebindings", &["list", "watch"]),
    // Access keys (get), and every project's runner ServiceAccount (controllers/limits.rs).
    ("serviceaccounts", &["get", "list", "watch"]),
    ("batch/jobs", &["get", "list", "watch"]),
    // Every project's ResourceQuota and LimitRange, kept level-triggered (controllers/limits.rs).
    ("resourcequotas", &["get", "list", "watch"]),
    ("limitranges", &["get", "list", "watch"]),
];

/// Cluster-scoped objects the reconciler may write (not their subresources); the confinement
/// policy (reconciler-confinement.yaml) refuses every other cluster-scoped write of it.
const RECONCILER_CLUSTER_WRITES: &[&str] = &["namespaces", "authorization.k8s.io/subjectaccessreviews"];

const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// `group/resource` (core group: `resource`) of the cluster-scoped resources the dev API server
/// serves, from discovery.
async fn cluster_scoped_resources(kubectl: &Path, kubeconfig: &Path) -> anyhow::Result<BTreeSet<String>> {
    let out = Command::new(kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["api-resources", "--namespaced=false", "--no-headers", "-o", "name"])
        .output()
        .await?;
    ensure!(out.status.success(), "kubectl api-resources: {}", String::from_utf8_lossy(&out.stderr));
    let names: BTreeSet<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(|l| match l.split_once('.') {
            Some((resource, group)) => format!("{group}/{resource}"),
            None => l.to_string(),
        })
        .collect();
    ensure!(
        names.contains("namespaces") && names.contains("rbac.authorization.k8s.io/clusterroles"),
        "discovery: {names:?}"
    );
    Ok(names)
}

/// Where the reconciler's ClusterRole reads more than [`RECONCILER_READS`] or writes a
/// cluster-scoped object beyond [`RECONCILER_CLUSTER_WRITES`].
fn reconciler_rule_violations(objects: &[Value], cluster_scoped: &BTreeSet<String>) -> Vec<String> {
    let mut v = Vec::new();
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "ambient-reconciler")
        .collect();
    if roles.len() != 1 {
        return vec![format!("{} ClusterRoles ambient-reconciler", roles.len())];
    }
    for (i, rule) in roles[0]["rules"].as_array().into_iter().flatten().enumerate() {
        for group in strs(&rule["apiGroups"]) {
            for resource in strs(&rule["resources"]) {
                let key = if group.is_empty() { resource.to_string() } else { format!("{group}/{resource}") };
                let object = key.split('/').take(if group.is_empty() { 1 } else { 2 }).collect::<Vec<_>>().join("/");
                for verb in strs(&rule["verbs"]) {
                    if READ_VERBS.contains(&verb) {
                        if !RECONCILER_READS.iter().any(|(r, verbs)| *r == key && verbs.contains(&verb)) {
                            v.push(format!("rule {i}: reads {key} ({verb}), which the reconciler's code does not"));
                        }
                    } else if verb != "bind"
                        && cluster_scoped.contains(&object)
                        && !RECONCILER_CLUSTER_WRITES.contains(&key.as_str())
                    {
                        v.push(format!(
                            "rule {i}: {verb} on the cluster-scoped {key}, which the confinement policy refuses"
                        ));
                    }
                }
            }
        }
    }
    v
}

#[test]
fn the_reconciler_rule_check_catches_extra_reads_and_cluster_writes() {
    let role = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ambient-reconciler}
rules:
  - {apiGroups: [""], resources: ["secrets"], verbs: ["get", "create"]}
  - {apiGroups: [""], resources: ["pods"], verbs: ["list", "deletecollection"]}
  - {apiGroups: [""], resources: ["namespaces"], verbs: ["get", "create", "delete"]}
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["clusterrolebindings"], verbs: ["create"]}
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["clusterroles"], verbs: ["bind"], resourceNames: ["ambient-project-view"]}
  - {apiGroups: ["authorization.k8s.io"], resources: ["subjectaccessreviews"], verbs: ["create"]}
  - {apiGroups: [""], resources: ["namespaces/finalize"], verbs: ["update"]}
"#;
    let scoped: BTreeSet<String> = [
        "namespaces",
        "rbac.authorization.k8s.io/clusterroles",
        "rbac.authorization.k8s.io/clusterrolebindings",
        "authorization.k8s.io/subjectaccessreviews",
    ]
    .map(String::from)
    .into();
    let v = reconciler_rule_violations(&parse_yaml(role).unwrap(), &scoped);
    assert_eq!(
        v,
        [
            "rule 0: reads secrets (get), which the reconciler's code does not",
            "rule 1: reads pods (list), which the reconciler's code does not",
            "rule 3: create on the cluster-scoped rbac.authorization.k8s.io/clusterrolebindings, which the confinement policy refuses",
            "rule 6: update on the cluster-scoped namespaces/finalize, which the confinement policy refuses",
        ],
        "{v:#?}"
    );
}

#[tokio::test]
async fn component_rbac_is_least_privilege() -> anyhow::Result<()> {
    // The files the harness applies (deploy/base/rbac/, what every component test runs under)...
    let dir = repo_dir().join("deploy/base/rbac");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            files.push(p);
        }
    }
    files.sort();
    let mut base = Vec::new();
    for f in &files {
        let docs = parse_yaml(&std::fs::read_to_string(f)?).with_context(|| format!("parsing {}", f.display()))?;
        base.extend(docs);
    }
    let v = rbac_violations(&base);
    assert!(v.is_empty(), "deploy/base/rbac/:\n{}", v.join("\n"));

    // ...each component has its own ServiceAccount, ClusterRole and binding to it...
    for c in COMPONENTS {
        let file = dir.join(format!("{c}.yaml"));
        let docs = parse_yaml(&std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?)?;
        let sa = format!("ambient-{c}");
        ensure!(
            docs.iter().any(|o| o["kind"] == "ServiceAccount"
                && o["metadata"]["name"] == sa.as_str()
                && o["metadata"]["namespace"] == "ambient-system"),
            "{c}.yaml: no ServiceAccount {sa} in ambient-system"
        );
        ensure!(docs.iter().any(|o| o["kind"] == "ClusterRole"), "{c}.yaml: no ClusterRole");
        ensure!(
            docs.iter().any(|o| o["kind"] == "ClusterRoleBinding"
                && o["subjects"].as_array().into_iter().flatten().any(|s| s["kind"] == "ServiceAccount"
                    && s["name"] == sa.as_str()
                    && s["namespace"] == "ambient-system")),
            "{c}.yaml: no ClusterRoleBinding to {sa}"
        );
    }

    // ...the reconciler reads only what its code reads, and writes no cluster-scoped object
    // but those its confinement policy lets through...
    let env = TestEnv::shared().await?;
    let (kubectl, kubeconfig) = kubectl(&env)?;
    let cluster_scoped = cluster_scoped_resources(&kubectl, &kubeconfig).await?;
    let v = reconciler_rule_violations(&base, &cluster_scoped);
    assert!(v.is_empty(), "deploy/base/rbac/reconciler.yaml:\n{}", v.join("\n"));

    // ...and nothing an overlay adds or patches widens it.
    for root in ROOTS {
        let objects = render(&kubectl, root).await?;
        let v = rbac_violations(&objects);
        assert!(v.is_empty(), "{root}:\n{}", v.join("\n"));
        let v = reconciler_rule_violations(&objects, &cluster_scoped);
        assert!(v.is_empty(), "{root}:\n{}", v.join("\n"));
        for c in COMPONENTS {
            ensure!(
                objects
                    .iter()
                    .any(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == format!("ambient-{c}").as_str()),
                "{root}: the rendering lacks ClusterRole ambient-{c} (deploy/base/kustomization.yaml must list rbac/{c}.yaml)"
            );
        }
    }
    Ok(())
}

/// The projector only reads, and only what it watches (projector/README.md): no verb beyond
/// get/list/watch cluster-wide, no Secrets, no tokens, no subresources.
#[test]
fn the_projector_cluster_role_only_reads_what_it_watches() -> anyhow::Result<()> {
    let file = repo_dir().join("deploy/base/rbac/projector.yaml");
    let docs = parse_yaml(&std::fs::read_to_string(&file)?)?;
    let role = docs
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "ambient-projector")
        .ok_or_else(|| anyhow!("no ClusterRole ambient-projector"))?;
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for verb in strs(&rule["verbs"]) {
            ensure!(matches!(verb, "get" | "list" | "watch"), "the projector's ClusterRole grants {verb:?}: {rule}");
        }
        ensure!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(), "unexpected rule {rule}");
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                granted.insert(format!("{g}/{r}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "/namespaces",
        "/pods",
        "/serviceaccounts",
        "batch/jobs",
        "rbac.authorization.k8s.io/rolebindings",
        "vteam.ambient-code/agenticsessions",
        "vteam.ambient-code/projectsettings",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, expected, "the projector's ClusterRole reads exactly what it watches");
    Ok(())
}

// ---- (c') the reconciler's confinement (admission policy) --------------------------------------

/// Where a rendering's confinement policy (reconciler-confinement.yaml) fails to confine every
/// write of the reconciler that rendering runs: missing, narrowed, not failing closed, not
/// denying, or matching another identity than its Deployment's ServiceAccount.
fn confinement_violations(objects: &[Value]) -> Vec<String> {
    let named = |kind: &str| -> Vec<&Value> {
        objects.iter().filter(|o| o["kind"] == kind && o["metadata"]["name"] == RECONCILER_CONFINEMENT).collect()
    };
    let (policies, bindings) = (named("ValidatingAdmissionPolicy"), named("ValidatingAdmissionPolicyBinding"));
    if policies.len() != 1 || bindings.len() != 1 {
        return vec![format!(
            "{} policies and {} bindings named {RECONCILER_CONFINEMENT}",
            policies.len(),
            bindings.len()
        )];
    }
    let mut v = Vec::new();
    let (policy, binding) = (&policies[0]["spec"], &bindings[0]["spec"]);
    for o in [policies[0], bindings[0]] {
        if o["apiVersion"] != "admissionregistration.k8s.io/v1" {
            v.push(format!("{}: apiVersion {}", name_of(o), o["apiVersion"]));
        }
    }
    if policy["failurePolicy"] != "Fail" {
        v.push("the policy does not fail closed (failurePolicy is not Fail)".into());
    }
    let mc = &policy["matchConstraints"];
    let rules = mc["resourceRules"].as_array().cloned().unwrap_or_default();
    let every_write = rules.len() == 1 && {
        let r = &rules[0];
        let ops: BTreeSet<&str> = strs(&r["operations"]).into_iter().collect();
        strs(&r["apiGroups"]) == ["*"]
            && strs(&r["apiVersions"]) == ["*"]
            && strs(&r["resources"]) == ["*/*"]
            && r["scope"] == "*"
            && (ops == BTreeSet::from(["CREATE", "UPDATE", "DELETE", "CONNECT"]) || ops == BTreeSet::from(["*"]))
    };
    if !every_write {
        v.push(format!("the policy does not match every write of every resource and subresource: {rules:?}"));
    }
    for narrowing in [
        &mc["namespaceSelector"],
        &mc["objectSelector"],
        &mc["excludeResourceRules"],
        &binding["matchResources"],
        &binding["paramRef"],
    ] {
        if !(narrowing.is_null()
            || narrowing.as_object().is_some_and(|m| m.is_empty())
            || narrowing.as_array().is_some_and(|a| a.is_empty()))
        {
            v.push(format!("the policy or its binding is narrowed: {narrowing}"));
        }
    }
    match objects.iter().find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "ambient-reconciler") {
        Some(d) => {
            let user = format!(
                "system:serviceaccount:{}:{}",
                d["metadata"]["namespace"].as_str().unwrap_or("?"),
                pod_spec(d)["serviceAccountName"].as_str().unwrap_or("?")
            );
            let conditions: Vec<&str> = policy["matchConditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["expression"].as_str())
                .collect();
            if conditions != [format!("request.userInfo.username == '{user}'")] {
                v.push(format!(
                    "the policy's matchConditions {conditions:?} do not select exactly the reconciler ({user})"
                ));
            }
        }
        None => v.push("no Deployment ambient-reconciler".into()),
    }
    let validations = policy["validations"].as_array().cloned().unwrap_or_default();
    if validations.is_empty() || validations.iter().any(|x| x["reason"] != "Forbidden") {
        v.push("the policy's validations are missing or not all Forbidden".into());
    }
    if binding["policyName"] != RECONCILER_CONFINEMENT || strs(&binding["validationActions"]) != ["Deny"] {
        v.push(format!("the binding does not deny with the policy: {binding}"));
    }
    v
}

#[test]
fn the_confinement_check_catches_a_weakened_policy() {
    let good = std::fs::read_to_string(repo_dir().join("deploy/base/rbac/reconciler-confinement.yaml")).unwrap()
        + "\n---\n"
        + &std::fs::read_to_string(repo_dir().join("deploy/base/reconciler/deployment.yaml")).unwrap();
    assert_eq!(confinement_violations(&parse_yaml(&good).unwrap()), Vec::<String>::new());
    for (weaken, expect) in [
        (("failurePolicy: Fail", "failurePolicy: Ignore"), "fail closed"),
        (("resources: [\"*/*\"]", "resources: [\"*\"]"), "every write"),
        (("\"DELETE\", ", ""), "every write"),
        (("ambient-system:ambient-reconciler'", "ambient-system:someone-else'"), "exactly the reconciler"),
        (("validationActions: [Deny]", "validationActions: [Warn]"), "does not deny"),
        (("namespaceSelector: {}", "namespaceSelector: {matchLabels: {x: y}}"), "narrowed"),
        (("objectSelector: {}", "objectSelector: {matchLabels: {x: y}}"), "narrowed"),
    ] {
        let text = good.replacen(weaken.0, weaken.1, 1);
        assert_ne!(text, good, "{weaken:?} changes nothing");
        let v = confinement_violations(&parse_yaml(&text).unwrap());
        assert!(v.len() == 1 && v[0].contains(expect), "{weaken:?}: {v:#?}");
    }
}

/// Every installable rendering ships the policy confining its reconciler, and the dev API
/// server (where deploy/base/rbac/ is applied) serves admissionregistration.k8s.io/v1 policies
/// and compiled this one without a type-checking warning.
#[tokio::test]
async fn the_reconciler_confinement_is_shipped_with_every_overlay_and_compiles() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let (kubectl, kubeconfig) = kubectl(&env)?;
    for root in ROOTS {
        let v = confinement_violations(&render(&kubectl, root).await?);
        assert!(v.is_empty(), "{root}:\n{}", v.join("\n"));
    }
    apply_rbac(&env).await?;
    let out = Command::new(&kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "get",
            "validatingadmissionpolicies.v1.admissionregistration.k8s.io",
            RECONCILER_CONFINEMENT,
            "-o",
            "json",
        ])
        .output()
        .await?;
    ensure!(out.status.success(), "kubectl get the policy: {}", String::from_utf8_lossy(&out.stderr));
    let policy: Value = serde_json::from_slice(&out.stdout)?;
    let warnings = &policy["status"]["typeChecking"]["expressionWarnings"];
    ensure!(warnings.as_array().is_none_or(Vec::is_empty), "type-checking warnings: {warnings}");
    Ok(())
}

/// Tenants cannot loosen their project's ResourceQuota and LimitRange: no ClusterRole a tenant
/// is bound to (the project roles and what the CRDs aggregate into the built-in admin/edit/view)
/// writes resourcequotas or limitranges, while the reconciler, which keeps them, may create and
/// server-side apply them (and never delete: they go with their namespace).
#[test]
fn only_the_reconciler_writes_project_quotas_and_limits() -> anyhow::Result<()> {
    let dir = repo_dir().join("deploy/base/rbac");
    let grants = |file: &str, role: &str| -> anyhow::Result<BTreeSet<String>> {
        let docs = parse_yaml(&std::fs::read_to_string(dir.join(file))?)?;
        let o = docs
            .iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == role)
            .ok_or_else(|| anyhow!("no ClusterRole {role}"))?;
        let mut out = BTreeSet::new();
        for rule in o["rules"].as_array().into_iter().flatten() {
            for r in strs(&rule["resources"]).into_iter().filter(|r| matches!(*r, "resourcequotas" | "limitranges")) {
                ensure!(strs(&rule["apiGroups"]) == [""], "{role}: {r} outside the core group: {rule}");
                for v in strs(&rule["verbs"]) {
                    out.insert(format!("{r}:{v}"));
                }
            }
        }
        Ok(out)
    };
    for (file, role) in [
        ("project-roles.yaml", "ambient-project-admin"),
        ("project-roles.yaml", "ambient-project-edit"),
        ("project-roles.yaml", "ambient-project-view"),
        ("aggregate-to-builtin.yaml", "ambient-aggregate-to-admin"),
        ("aggregate-to-builtin.yaml", "ambient-aggregate-to-edit"),
        ("aggregate-to-builtin.yaml", "ambient-aggregate-to-view"),
    ] {
        let writes: Vec<_> = grants(file, role)?
            .into_iter()
            .filter(|g| !g.ends_with(":get") && !g.ends_with(":list") && !g.ends_with(":watch"))
            .collect();
        assert!(writes.is_empty(), "{role} lets tenants change their limits: {writes:?}");
    }
    let want: BTreeSet<String> = ["resourcequotas", "limitranges"]
        .iter()
        .flat_map(|r| ["get", "list", "watch", "create", "patch"].map(|v| format!("{r}:{v}")))
        .collect();
    assert_eq!(
        grants("reconciler.yaml", "ambient-reconciler")?,
        want,
        "the reconciler applies (never updates or deletes) quotas and limits"
    );
    Ok(())
}

// ---- (d) NATS permissions ---------------------------------------------------------------------

/// Connects to the deploy/ NATS as `user`, recording the server's permission errors.
async fn connect_bus(nats: &DeployNats, user: &'static str) -> anyhow::Result<Bus> {
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = errors.clone();
    let mut options = async_nats::ConnectOptions::with_user_and_password(user.into(), nats.passwords[user].clone());
    if user == "subscriber" {
        // Its replies go to its own prefix (deploy/base/nats/accounts.conf).
        options = options.custom_inbox_prefix("_INBOX_subscriber");
    }
    let client = options
        .name(user)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |ev| {
            let sink = sink.clone();
            async move {
                if let Ok(mut s) = sink.lock() {
                    match ev {
                        async_nats::Event::ServerError(e) => s.push(e.to_string()),
                        // Kept to explain a lost live message (a reconnect).
                        other => s.push(format!("event: {other}")),
                    }
                }
            }
        })
        .connect(nats.url.as_str())
        .await
        .with_context(|| format!("connecting as {user}"))?;
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_secs(2)).build(client.clone());
    Ok(Bus { user, client, js, errors })
}

/// One component's connection, recording the server's permission errors.
struct Bus {
    user: &'static str,
    client: async_nats::Client,
    js: jetstream::Context,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Bus {
    /// Publishes to `subject` with a reply inbox (the way JetStream publishes and API calls
    /// go) and asserts the server refuses it: a permissions violation naming `subject`, and no
    /// answer on the inbox.
    async fn refused(&self, subject: &str) -> anyhow::Result<()> {
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(inbox.clone()).await?;
        self.client.publish_with_reply(subject.to_string(), inbox, "{}".into()).await?;
        self.client.flush().await?;
        let needle = format!("Permissions Violation for Publish to \"{subject}\"");
        wait_for(&format!("{}: refusal of {subject}", self.user), Duration::from_secs(5), || {
            let found = self.errors.lock().map(|e| e.iter().any(|x| x.contains(&needle))).unwrap_or(false);
            async move { Ok(found) }
        })
        .await?;
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(100), futures::StreamExt::next(&mut replies)).await
        {
            bail!("{} got an answer on {subject}: {:?}", self.user, String::from_utf8_lossy(&m.payload));
        }
        Ok(())
    }

    /// Subscribing to `subject` is refused.
    async fn subscribe_refused(&self, subject: &str) -> anyhow::Result<()> {
        let _sub = self.client.subscribe(subject.to_string()).await?;
        self.client.flush().await?;
        let needle = format!("Permissions Violation for Subscription to \"{subject}\"");
        wait_for(&format!("{}: refusal of subscribing {subject}", self.user), Duration::from_secs(5), || {
            let found = self.errors.lock().map(|e| e.iter().any(|x| x.contains(&needle))).unwrap_or(false);
            async move { Ok(found) }
        })
        .await
    }

    fn violations(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

async fn messages_in(js: &jetstream::Context, name: &str) -> anyhow::Result<u64> {
    let mut s = js.get_stream(name).await?;
    Ok(s.info().await?.state.messages)
}

#[tokio::test]
async fn nats_permissions_from_deploy_enforce_who_publishes_consumes_and_writes() -> anyhow::Result<()> {
    let nats = DeployNats::start().await?;

    // Authentication: no anonymous access, no access with another user's password.
    ensure!(async_nats::connect(nats.url.as_str()).await.is_err(), "anonymous connection accepted");
    ensure!(
        async_nats::ConnectOptions::with_user_and_password("api".into(), nats.passwords["projector"].clone())
            .connect(nats.url.as_str())
            .await
            .is_err(),
        "api connected with the projector's password"
    );

    let api = connect_bus(&nats, "api").await?;
    let rec = connect_bus(&nats, "reconciler").await?;
    let proj = connect_bus(&nats, "projector").await?;
    let cfg = BusConfig { duplicate_window: Duration::from_secs(60), ..BusConfig::default() };

    // Bootstrap: whoever starts first creates everything; the others find it unchanged.
    let first = streams::bootstrap_streams(&proj.js, &cfg).await.context("projector bootstraps a fresh bus")?;
    assert_eq!(first.created.len(), 7, "{first:?}");
    for b in [&api, &rec] {
        let r = streams::bootstrap_streams(&b.js, &cfg).await.with_context(|| format!("{} bootstraps", b.user))?;
        assert!(r.created.is_empty() && r.updated.is_empty(), "{}: {r:?}", b.user);
    }
    // Only the reconciler changes a stream's configuration...
    let changed = BusConfig { max_age: cfg.max_age + Duration::from_secs(3600), ..cfg.clone() };
    for b in [&api, &proj] {
        ensure!(streams::bootstrap_streams(&b.js, &changed).await.is_err(), "{} updated a stream", b.user);
        b.refused("$JS.API.STREAM.UPDATE.AMBIENT_COMMANDS").await?;
    }
    let r = streams::bootstrap_streams(&rec.js, &changed).await.context("reconciler updates the streams")?;
    // (AMBIENT_MESSAGES has no max_age: it keeps a count per session instead.)
    assert_eq!(r.updated, ["AMBIENT_COMMANDS", "AMBIENT_RESULTS", "AMBIENT_STATUS"], "{r:?}");
    let cfg = changed;
    // ...and only it creates the command consumers.
    let r = streams::bootstrap_consumers(&rec.js, &cfg).await.context("reconciler creates its consumers")?;
    assert_eq!(r.created.len(), cfg.partitions as usize, "{r:?}");
    for b in [&api, &proj] {
        ensure!(streams::bootstrap_consumers(&b.js, &cfg).await.is_err(), "{} touched the command consumers", b.user);
    }

    // Commands: the api publishes; nobody else can.
    let cmd_subject = "ambient.cmd.team-a.session.create";
    let ack = api.js.publish(cmd_subject, "command".into()).await?.await.context("api publishes a command")?;
    assert_eq!(ack.stream, streams::COMMANDS_STREAM);
    for b in [&rec, &proj] {
        b.refused(cmd_subject).await?;
    }
    // Nobody but the reconciler reads, pulls or acks commands, or makes a consumer of them.
    for b in [&api, &proj] {
        for p in 0..cfg.partitions {
            b.refused(&format!("$JS.API.CONSUMER.MSG.NEXT.AMBIENT_COMMANDS.reconciler-p{p}")).await?;
        }
        for subject in [
            "$JS.API.CONSUMER.INFO.AMBIENT_COMMANDS.reconciler-p0",
            "$JS.API.CONSUMER.CREATE.AMBIENT_COMMANDS",
            "$JS.API.CONSUMER.CREATE.AMBIENT_COMMANDS.thief.ambient.cmd.>",
            "$JS.API.CONSUMER.DELETE.AMBIENT_COMMANDS.reconciler-p0",
            "$JS.API.STREAM.MSG.GET.AMBIENT_COMMANDS",
            "$JS.API.DIRECT.GET.AMBIENT_COMMANDS",
            "$JS.ACK.AMBIENT_COMMANDS.reconciler-p0.1.1.1.0.0",
        ] {
            b.refused(subject).await?;
        }
    }
    // Nobody removes commands.
    for b in [&api, &rec, &proj] {
        for subject in [
            "$JS.API.STREAM.DELETE.AMBIENT_COMMANDS",
            "$JS.API.STREAM.PURGE.AMBIENT_COMMANDS",
            "$JS.API.STREAM.MSG.DELETE.AMBIENT_COMMANDS",
        ] {
            b.refused(subject).await?;
        }
    }
    assert_eq!(messages_in(&rec.js, streams::COMMANDS_STREAM).await?, 1, "only the api's command is stored");
    // After a crash the reconciler reads a partition's pending commands (reconciler/src/order.rs).
    let stored = rec
        .js
        .get_stream(streams::COMMANDS_STREAM)
        .await?
        .direct_get_next_for_subject("ambient.cmd.>", Some(1))
        .await
        .context("the reconciler reads pending commands")?;
    assert_eq!(&stored.payload[..], b"command");

    // The reconciler consumes it: delivered once, so none of the refused pulls got it.
    let commands = rec.js.get_stream(streams::COMMANDS_STREAM).await?;
    let mut pulled = None;
    for p in 0..cfg.partitions {
        let mut c: consumer::PullConsumer =
            commands.get_consumer(&BusConfig::partition_consumer_name(p)).await.map_err(anyhow::Error::from_boxed)?;
        if c.info().await?.num_pending == 0 {
            continue;
        }
        let mut messages = c
            .stream()
            .group(streams::RECONCILER_GROUP)
            .max_messages_per_batch(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        let m = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut messages))
            .await
            .context("pulling the command")?
            .ok_or_else(|| anyhow!("partition {p}: pull ended"))?;
        pulled = Some(m?);
        break;
    }
    let msg = pulled.ok_or_else(|| anyhow!("the reconciler found the command in no partition"))?;
    assert_eq!(&msg.payload[..], b"command");
    assert_eq!(msg.info().map_err(anyhow::Error::from_boxed)?.delivered, 1, "delivered to nobody before");
    msg.double_ack().await.map_err(anyhow::Error::from_boxed).context("reconciler acks")?;

    // Results: the reconciler publishes and reads its ledger; the api waits for and reads them.
    let mut waiting = api.client.subscribe("ambient.result.team-a.>").await?;
    api.client.flush().await?;
    // A live (core NATS) message can be lost in a reconnect, which the api covers by reading the
    // stored result; this checks the permission, so a lost one is sent again (at most thrice).
    let mut published: Vec<String> = Vec::new();
    let result_subject = loop {
        let subject = format!("ambient.result.team-a.{}", uuid::Uuid::now_v7());
        rec.js.publish(subject.clone(), "result".into()).await?.await.context("reconciler publishes a result")?;
        published.push(subject);
        match tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut waiting)).await {
            Ok(live) => {
                let seen = live.map(|m| m.subject.to_string()).unwrap_or_default();
                ensure!(published.contains(&seen), "the api saw {seen:?} live, not one of {published:?}");
                break seen;
            }
            Err(_) if published.len() < 3 => continue,
            Err(_) => bail!(
                "the api saw none of {} results live; its connection's events: {:?}",
                published.len(),
                api.errors.lock().map(|e| e.clone())
            ),
        }
    };
    let results = rec.js.get_stream(streams::RESULTS_STREAM).await?;
    results.direct_get_last_for_subject(&result_subject).await.context("reconciler reads its ledger")?;
    let results = api.js.get_stream(streams::RESULTS_STREAM).await?;
    results.get_last_raw_message_by_subject(&result_subject).await.context("api reads a result")?;
    for b in [&api, &proj] {
        b.refused(&format!("ambient.result.team-a.{}", uuid::Uuid::now_v7())).await?;
    }
    assert_eq!(messages_in(&rec.js, streams::RESULTS_STREAM).await?, published.len() as u64);

    // Status: only the projector publishes; the api replays it (SSE) and the projector's
    // sinks consume it durably.
    let status_subject = "ambient.status.team-a.session.s1";
    proj.js.publish(status_subject, "status".into()).await?.await.context("projector publishes status")?;
    for b in [&api, &rec] {
        b.refused(status_subject).await?;
    }
    assert_eq!(messages_in(&proj.js, streams::STATUS_STREAM).await?, 1);
    let status = api.js.get_stream(streams::STATUS_STREAM).await?;
    let mut replay = status
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "ambient.status.team-a.>".into(),
            ..Default::default()
        })
        .await
        .context("api creates an ordered consumer on status")?
        .messages()
        .await?;
    let first_status = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut replay))
        .await?
        .ok_or_else(|| anyhow!("no status replayed"))??;
    assert_eq!(first_status.subject.as_str(), status_subject);
    let status = proj.js.get_stream(streams::STATUS_STREAM).await?;
    let sink: consumer::PullConsumer = status
        .create_consumer(consumer::pull::Config {
            durable_name: Some("projector-sink-test".into()),
            filter_subject: "ambient.status.>".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .context("projector creates a sink consumer")?;
    let mut batch = sink.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await?;
    let m = futures::StreamExt::next(&mut batch)
        .await
        .ok_or_else(|| anyhow!("sink got nothing"))?
        .map_err(anyhow::Error::from_boxed)?;
    m.double_ack().await.map_err(anyhow::Error::from_boxed).context("projector acks a sink delivery")?;
    api.refused("$JS.ACK.AMBIENT_STATUS.projector-sink-test.1.1.1.0.0").await?;
    // The projector purges a deleted project's status history; nobody else may purge status.
    for b in [&api, &rec] {
        b.refused("$JS.API.STREAM.PURGE.AMBIENT_STATUS").await?;
    }
    assert_eq!(messages_in(&proj.js, streams::STATUS_STREAM).await?, 1, "the refused purges removed nothing");
    let purged = proj
        .js
        .get_stream(streams::STATUS_STREAM)
        .await?
        .purge()
        .filter("ambient.status.team-a.>")
        .await
        .context("projector purges a deleted project's status")?;
    assert_eq!(purged.purged, 1);

    // The outside subscriber reads status live and the last event of an object, nothing else.
    let sub = connect_bus(&nats, "subscriber").await?;
    let mut live = sub.client.subscribe("ambient.status.>").await.context("subscriber subscribes to status")?;
    sub.client.flush().await?;
    let watched = "ambient.status.team-b.session.s9";
    // Published until one arrives (a few tries): what is proved is that it may receive status.
    let mut got = None;
    for _ in 0..10 {
        proj.js.publish(watched, "phase".into()).await?.await?;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), futures::StreamExt::next(&mut live)).await {
            got = Some(m);
            break;
        }
    }
    let got = got.ok_or_else(|| {
        anyhow!("the subscriber received no status event live; its connection saw {:?}", sub.violations())
    })?;
    assert_eq!((got.subject.as_str(), &got.payload[..]), (watched, &b"phase"[..]));
    let last = sub
        .client
        .request(format!("$JS.API.DIRECT.GET.{}.{watched}", streams::STATUS_STREAM), "".into())
        .await
        .context("subscriber reads an object's last status event")?;
    assert_eq!(&last.payload[..], b"phase");
    for subject in [
        watched,
        "ambient.cmd.team-b.session.create",
        "ambient.msg.team-b.s9",
        "ambient.result.team-b.x",
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.AMBIENT_STATUS",
        "$JS.API.CONSUMER.CREATE.AMBIENT_STATUS",
        "$JS.API.STREAM.PURGE.AMBIENT_STATUS",
        "$JS.API.DIRECT.GET.AMBIENT_MESSAGES.ambient.msg.team-b.s9",
        "$JS.API.DIRECT.GET.AMBIENT_RESULTS.ambient.result.team-b.x",
        "$JS.API.DIRECT.GET.KV_ambient-sessions.$KV.ambient-sessions.team-b.s9",
        "$KV.ambient-sessions.team-b.s9",
    ] {
        sub.refused(subject).await?;
    }
    for subject in ["ambient.msg.>", "ambient.cmd.>", "ambient.result.>", "_INBOX.>", "$KV.>", "ambient.>"] {
        sub.subscribe_refused(subject).await?;
    }

    // Read model: the projector writes, the api reads, nobody else writes.
    let sessions = proj.js.get_key_value(streams::SESSIONS_BUCKET).await?;
    sessions.put("team-a.s1", "view".into()).await.context("projector writes the read model")?;
    let read = api.js.get_key_value(streams::SESSIONS_BUCKET).await?;
    assert_eq!(read.get("team-a.s1").await.context("api reads the read model")?.as_deref(), Some(&b"view"[..]));
    for b in [&api, &rec] {
        b.refused("$KV.ambient-sessions.team-a.s2").await?;
        b.refused("$KV.ambient-projects.team-a").await?;
        b.refused("$KV.ambient-access.team-a.permission.x").await?;
    }

    // The api's own buckets: its to use, nobody else's.
    let idem = api
        .js
        .create_key_value(kv::Config {
            bucket: "ambient-api-idempotency".into(),
            history: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("api creates its idempotency bucket")?;
    idem.put("k", "v".into()).await.context("api writes its bucket")?;
    for bucket in
        ["ambient-api-commands", "ambient-api-key-usage", "ambient-api-message-usage", "ambient-api-parked-keys"]
    {
        let store = api
            .js
            .create_key_value(kv::Config {
                bucket: bucket.into(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("api creates its bucket {bucket}"))?;
        store.put("team-a.k", "v".into()).await.with_context(|| format!("api writes {bucket}"))?;
        assert_eq!(store.get("team-a.k").await?.as_deref(), Some(&b"v"[..]));
        let entry = store.entry("team-a.k").await?.context("an entry")?;
        store
            .update("team-a.k", "w".into(), entry.revision)
            .await
            .with_context(|| format!("api updates {bucket} with compare-and-set"))?;
    }
    // The message budgets' sweep lists the keys.
    let usage = api.js.get_key_value("ambient-api-message-usage").await?;
    let keys: Vec<String> =
        futures::TryStreamExt::try_collect(usage.keys().await.context("api lists message budgets")?).await?;
    assert_eq!(keys, vec!["team-a.k".to_string()]);
    for b in [&rec, &proj] {
        b.refused("$KV.ambient-api-key-usage.team-a.k").await?;
        b.refused("$KV.ambient-api-message-usage.team-a").await?;
        b.refused("$KV.ambient-api-parked-keys.k.x").await?;
        b.refused("$JS.API.DIRECT.GET.KV_ambient-api-parked-keys.$KV.ambient-api-parked-keys.k.x").await?;
        b.refused("$KV.ambient-api-idempotency.k").await?;
        b.refused("$JS.API.DIRECT.GET.KV_ambient-api-idempotency.$KV.ambient-api-idempotency.k").await?;
    }

    // The reconciler's project-quota claims: its to use, nobody else's.
    let claims =
        rec.js.create_key_value(cfg.project_claims_bucket()).await.context("reconciler creates its claims bucket")?;
    claims.create("u.alice", "{}".into()).await.context("reconciler writes a claim")?;
    claims.entry("u.alice").await.context("reconciler reads its claims")?;
    for b in [&api, &proj] {
        b.refused("$KV.ambient-project-claims.u.alice").await?;
    }

    // Session messages: the api appends; the others do not.
    api.js.publish("ambient.msg.team-a.s1", "hello".into()).await?.await.context("api appends a session message")?;
    for b in [&rec, &proj] {
        b.refused("ambient.msg.team-a.s1").await?;
    }
    // The api purges a deleted session's messages; nobody else may.
    let purged = api
        .js
        .get_stream(streams::MESSAGES_STREAM)
        .await?
        .purge()
        .filter("ambient.msg.team-a.s1")
        .await
        .context("api purges a deleted session's messages")?;
    assert!(purged.success);
    for b in [&rec, &proj] {
        b.refused("$JS.API.STREAM.PURGE.AMBIENT_MESSAGES").await?;
    }
    // The api replicas announce accepted commands to each other; nobody else can forge one.
    let mut heard = api.client.subscribe("ambient.accepted.>").await?;
    api.client.publish("ambient.accepted.team-a.session.create", "{}".into()).await.context("api announces")?;
    api.client.flush().await?;
    tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut heard))
        .await
        .context("api hears an announcement")?;
    for b in [&rec, &proj] {
        b.refused("ambient.accepted.team-a.session.create").await?;
    }
    // Nobody but the api listens to live results or chat.
    proj.subscribe_refused("ambient.result.>").await?;
    rec.subscribe_refused("ambient.msg.>").await?;

    // The allowed operations above raised no permission error of their own.
    let unexpected: Vec<String> = [&api, &rec, &proj, &sub]
        .iter()
        .flat_map(|b| b.violations().into_iter().map(move |e| format!("{}: {e}", b.user)))
        .filter(|e| !e.contains("Permissions Violation") && !e.contains(": event: "))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    Ok(())
}

/// The shipped NATS configurations (base and production) parse, with the variables the
/// StatefulSet provides, in nats-server's own configuration check.
#[tokio::test]
async fn shipped_nats_configurations_are_valid() -> anyhow::Result<()> {
    for conf in ["deploy/base/nats/nats.conf", "deploy/components/production/nats.conf"] {
        let dir = tempfile::tempdir()?;
        std::fs::copy(repo_dir().join("deploy/base/nats/accounts.conf"), dir.path().join("accounts.conf"))?;
        std::fs::copy(repo_dir().join(conf), dir.path().join("nats.conf"))?;
        let out = Command::new(nats_server_bin())
            .arg("-t")
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .env("POD_NAME", "ambient-nats-0")
            .env("NATS_API_PASSWORD", "a")
            .env("NATS_RECONCILER_PASSWORD", "b")
            .env("NATS_PROJECTOR_PASSWORD", "c")
            .env("NATS_SUBSCRIBER_PASSWORD", "d")
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "{conf}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Without a password the server refuses to start rather than run open.
        let out = Command::new(nats_server_bin())
            .arg("-t")
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .env("POD_NAME", "ambient-nats-0")
            .env_remove("NATS_API_PASSWORD")
            .env("NATS_RECONCILER_PASSWORD", "b")
            .env("NATS_PROJECTOR_PASSWORD", "c")
            .env("NATS_SUBSCRIBER_PASSWORD", "d")
            .output()
            .await?;
        ensure!(!out.status.success(), "{conf}: valid without NATS_API_PASSWORD");
    }
    Ok(())
}

/// deploy/gen-secrets.sh (the documented openssl recipe) produces keys in exactly the formats
/// the services parse, and the public halves match the secret ones.
#[tokio::test]
async fn generated_secrets_are_in_the_formats_the_services_read() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out_dir = dir.path().join("keys");
    let out = Command::new("bash").arg(repo_dir().join("deploy/gen-secrets.sh")).arg(&out_dir).output().await?;
    ensure!(out.status.success(), "gen-secrets.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).with_context(|| format!("reading {f}"));

    let signer = events::signing::CommandSigner::from_pem(&read("command-signing.pem")?)?;
    events::signing::CommandVerifier::from_pem(&read("command-verify.pem")?)?;
    assert_eq!(
        signer.public_pem()?.trim(),
        read("command-verify.pem")?.trim(),
        "command-verify.pem is the public half of command-signing.pem"
    );
    let sealing = events::sealing::SealingSecretKey::from_base64(&read("sealing.key")?)?;
    let public = events::sealing::SealingPublicKey::from_base64(&read("sealing-public-key")?)?;
    assert_eq!(
        String::from(sealing.public_key()),
        String::from(public.clone()),
        "sealing-public-key is the public half of sealing.key"
    );
    let sealed = public.seal(b"runner secret")?;
    assert_eq!(sealing.open(&sealed)?, b"runner secret");

    for user in COMPONENTS.iter().copied().chain(["subscriber"]) {
        let pw = read(&format!("nats-{user}-password"))?;
        ensure!(pw.len() >= 32 && pw.starts_with(|c: char| c.is_ascii_alphabetic()), "weak or numeric NATS password");
    }
    assert_eq!(read("cookie-secret")?.len(), 32, "oauth-proxy wants a 16, 24 or 32 byte cookie secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out_dir)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the key directory is private");
    }
    Ok(())
}

// ---- versions ---------------------------------------------------------------------------------

/// The value after `key` (e.g. `version = "`, `NATS_SERVER_VERSION=`) on the first line that has
/// it, up to the next quote or the line's end.
fn value_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = text.lines().find_map(|l| l.split_once(key).map(|(_, r)| r))?;
    Some(rest.split(['"', ' ']).next().unwrap_or(rest))
}

#[test]
fn manifests_pin_the_versions_the_tests_run() -> anyhow::Result<()> {
    let read = |p: &str| std::fs::read_to_string(repo_dir().join(p)).with_context(|| format!("reading {p}"));
    let cargo = read("Cargo.toml")?;
    let versions = read("deploy/dev/versions.env")?;
    let workspace_version = value_after(&cargo, "version = \"").context("the workspace version")?;

    // Our images carry the workspace version; no manifest in deploy/ runs a `latest` image.
    // (The session runner's image is the operator's to choose: `--runner-image`.)
    let kustomization = read("deploy/base/kustomization.yaml")?;
    let tags: Vec<&str> =
        kustomization.lines().filter_map(|l| l.trim().strip_prefix("newTag: ")).map(|t| t.trim_matches('"')).collect();
    assert_eq!(tags, [workspace_version; 3], "deploy/base/kustomization.yaml image tags");
    for entry in walk(&repo_dir().join("deploy"))?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(!text.contains(":latest") && !text.contains("newTag: latest"), "{}: a latest image", entry.display());
    }

    // The NATS server of the manifests is the one the dev scripts and tests run.
    let nats = value_after(&versions, "NATS_SERVER_VERSION=").context("NATS_SERVER_VERSION")?;
    let statefulset = read("deploy/base/nats/statefulset.yaml")?;
    let image = value_after(&statefulset, "image: ").context("the NATS image")?;
    assert_eq!(image, format!("nats:{nats}"), "deploy/base/nats/statefulset.yaml");

    // One supported Kubernetes range: the k8s-openapi feature is the oldest, the README says
    // the same (and the OpenShift release on it), the dev cluster is inside it.
    let oldest: u32 = cargo
        .split("\"v1_")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|m| m.parse().ok())
        .context("the k8s-openapi version feature")?;
    let readme = read("deploy/README.md")?;
    let openshift = oldest - 13; // OpenShift 4.N ships Kubernetes 1.(N+13)
    let stated = format!("Kubernetes 1.{oldest} or newer (OpenShift 4.{openshift} or newer)");
    assert!(readme.contains(&stated), "deploy/README.md must state \"{stated}\"");
    assert!(readme.contains(&format!("feature `v1_{oldest}`")), "deploy/README.md names the k8s-openapi feature");
    let tested: u32 = value_after(&versions, "K8S_VERSION=v1.")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("K8S_VERSION")?;
    assert!(tested >= oldest, "the dev cluster (1.{tested}) is older than the oldest supported (1.{oldest})");
    assert!(readme.contains(&format!("tested on 1.{tested}")), "deploy/README.md names the tested release");
    Ok(())
}

/// Every file below `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() { out.extend(walk(&path)?) } else { out.push(path) }
    }
    Ok(out)
}
