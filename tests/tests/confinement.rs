//! The reconciler is confined to projects (issue 15, items 7 and 8). With its own credentials
//! (its ServiceAccount's token, exactly what a stolen token would give) every write outside a
//! namespace labelled `ambient-code.io/managed=true` is refused by the admission policy
//! `ambient-reconciler-confinement` (deploy/base/rbac/reconciler-confinement.yaml): tokens for
//! kube-system ServiceAccounts, Jobs, RoleBindings, Secrets, namespace changes and
//! deletions, unlabelled namespaces. The same writes in a project succeed, except Jobs that
//! would reach the node (privileged, host namespaces, ports or paths). Reads its code does
//! not make (Secrets, pods) and writes it never makes (Roles) are not in its ClusterRole at all. And its ProjectSettings
//! controller does not even try to write RoleBindings for a ProjectSettings outside a project.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use ambient_tests::components::{BusKeys, Component, RECONCILER_CONFINEMENT, ServiceProcess};
use ambient_tests::{DemoUser, TestEnv, eventually, unique_name};
use events::crd::ProjectSettings;

const MANAGED: &str = "ambient-code.io/managed";

/// A client with the reconciler's own ServiceAccount token (after deploy/base/rbac/ and the
/// policy are applied and in force).
async fn reconciler_client(env: &TestEnv) -> anyhow::Result<kube::Client> {
    let path = Component::Reconciler.kubeconfig(env).await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// Every kind of write the reconciler makes in a project, tried in `ns` with its credentials,
/// on objects named `name` (and `<name>-ssa`): the outcome of each, by what it tried.
async fn project_writes(rec: &kube::Client, ns: &str, name: &str) -> Vec<(&'static str, Result<(), kube::Error>)> {
    let pp = PostParams::default();
    let mut out = Vec::new();
    let sas = Api::<ServiceAccount>::namespaced(rec.clone(), ns);
    out.push(("create a ServiceAccount", sas.create(&pp, &from(json!({"metadata": {"name": name}}))).await.map(drop)));
    // A token for the namespace's `default` ServiceAccount (in kube-system: a system identity).
    out.push((
        "create a TokenRequest (serviceaccounts/token)",
        sas.create_token_request(
            "default",
            &pp,
            &from::<TokenRequest>(json!({"spec": {"audiences": [], "expirationSeconds": 600}})),
        )
        .await
        .map(drop),
    ));
    let job = json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "example.invalid/confine:1"}],
        }}},
    });
    out.push(("create a Job", Api::<Job>::namespaced(rec.clone(), ns).create(&pp, &from(job)).await.map(drop)));
    let rb = json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ambient-project-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
    });
    out.push((
        "create a RoleBinding",
        Api::<RoleBinding>::namespaced(rec.clone(), ns).create(&pp, &from(rb)).await.map(drop),
    ));
    let secret = json!({"metadata": {"name": name}, "stringData": {"K": "v"}});
    out.push((
        "create a Secret",
        Api::<Secret>::namespaced(rec.clone(), ns).create(&pp, &from(secret)).await.map(drop),
    ));
    // Server-side apply, as the reconciler writes the runner secret.
    let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-ssa")}, "stringData": {"K": "v"}});
    out.push((
        "server-side apply a Secret",
        Api::<Secret>::namespaced(rec.clone(), ns)
            .patch(&format!("{name}-ssa"), &PatchParams::apply("confine-test").force(), &Patch::Apply(applied))
            .await
            .map(drop),
    ));
    let annotate = json!({"metadata": {"annotations": {"ambient-code.io/confine-test": name}}});
    out.push((
        "patch the namespace",
        Api::<Namespace>::all(rec.clone()).patch(ns, &PatchParams::default(), &Patch::Merge(annotate)).await.map(drop),
    ));
    out
}

/// `r` is the policy's refusal: 403 naming the policy, with `says` in its message.
fn refused_by_policy(what: &str, r: &Result<(), kube::Error>, says: &str) {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{what}: {s:?}");
            assert!(
                s.message.contains(&format!("ValidatingAdmissionPolicy '{RECONCILER_CONFINEMENT}'"))
                    && s.message.contains(says),
                "{what}: refused, but not by the confinement policy saying {says:?}: {}",
                s.message
            );
        }
        other => panic!("{what}: not refused: {other:?}"),
    }
}

/// 403 from RBAC (the ClusterRole lacks the right).
fn forbidden_by_rbac(what: &str, r: Result<(), kube::Error>) {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{what}: {s:?}");
            assert!(s.message.contains("cannot"), "{what}: not an RBAC refusal: {}", s.message);
        }
        other => panic!("{what}: allowed: {other:?}"),
    }
}

async fn create_namespace(c: &kube::Client, name: &str, labels: Value) -> Result<(), kube::Error> {
    let ns: Namespace = from(json!({"metadata": {"name": name, "labels": labels}}));
    Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &ns).await.map(drop)
}

#[tokio::test]
async fn the_reconciler_writes_in_kube_system_and_unmanaged_namespaces_are_refused() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let rec = reconciler_client(&env).await?;
    // A namespace that is not a project (an operator's, or a tenant's own).
    let plain = env.namespace("confine-plain").await?;

    let name = unique_name("confine");
    for ns in ["kube-system", plain.as_str()] {
        let writes = project_writes(&rec, ns, &name).await;
        assert_eq!(writes.len(), 7);
        for (what, r) in &writes {
            let says = if *what == "patch the namespace" {
                format!(
                    "changes or deletes only projects (namespaces labelled {MANAGED}=true), and namespace {ns} is not one"
                )
            } else {
                format!("writes only in projects (namespaces labelled {MANAGED}=true), and namespace {ns} is not one")
            };
            refused_by_policy(&format!("{what} in {ns}"), r, &says);
        }
    }
    // Nothing was written.
    let admin = env.admin();
    let lp = ListParams::default();
    for ns in ["kube-system", plain.as_str()] {
        let secrets = Api::<Secret>::namespaced(admin.clone(), ns);
        for n in [name.clone(), format!("{name}-ssa")] {
            assert!(secrets.get_opt(&n).await?.is_none(), "Secret {ns}/{n} written");
        }
        assert!(Api::<Job>::namespaced(admin.clone(), ns).get_opt(&name).await?.is_none(), "Job {ns}/{name} written");
        assert!(
            Api::<RoleBinding>::namespaced(admin.clone(), ns).get_opt(&name).await?.is_none(),
            "RoleBinding {ns}/{name} written"
        );
    }
    // Neither deleted nor adopted as a project.
    let namespaces = Api::<Namespace>::all(rec.clone());
    refused_by_policy(
        "delete an unmanaged namespace",
        &namespaces.delete(&plain, &DeleteParams::default()).await.map(drop),
        &format!(
            "changes or deletes only projects (namespaces labelled {MANAGED}=true), and namespace {plain} is not one"
        ),
    );
    for ns in ["kube-system", plain.as_str()] {
        let adopt = json!({"metadata": {"labels": {MANAGED: "true"}}});
        refused_by_policy(
            &format!("label {ns} a project"),
            &namespaces.patch(ns, &PatchParams::default(), &Patch::Merge(adopt)).await.map(drop),
            &format!("and namespace {ns} is not one"),
        );
        let ns = Api::<Namespace>::all(admin.clone()).get(ns).await?;
        assert!(ns.metadata.deletion_timestamp.is_none());
        assert_eq!(ns.metadata.labels.unwrap_or_default().get(MANAGED), None);
    }

    // Reads its code never makes are not granted at all (admission cannot confine reads).
    forbidden_by_rbac(
        "get a Secret in kube-system",
        Api::<Secret>::namespaced(rec.clone(), "kube-system").get("any").await.map(drop),
    );
    forbidden_by_rbac("list Secrets", Api::<Secret>::all(rec.clone()).list(&lp).await.map(drop));
    forbidden_by_rbac("list pods", Api::<Pod>::all(rec.clone()).list(&lp).await.map(drop));
    forbidden_by_rbac("get a pod", Api::<Pod>::namespaced(rec.clone(), "kube-system").get("any").await.map(drop));
    forbidden_by_rbac("list Roles", Api::<Role>::all(rec.clone()).list(&lp).await.map(drop));
    // Nor writes it never makes: runners share a ServiceAccount without rights, so no Roles.
    let role = json!({
        "metadata": {"name": "confine-role"},
        "rules": [{"apiGroups": ["vteam.ambient-code"], "resources": ["agenticsessions"], "verbs": ["get"]}],
    });
    for ns in ["kube-system", plain.as_str()] {
        let created =
            Api::<Role>::namespaced(rec.clone(), ns).create(&PostParams::default(), &from(role.clone())).await;
        forbidden_by_rbac(&format!("create a Role in {ns}"), created.map(drop));
    }
    Ok(())
}

#[tokio::test]
async fn the_reconciler_creates_changes_and_deletes_only_labelled_namespaces_and_writes_freely_in_them()
-> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let rec = reconciler_client(&env).await?;
    let namespaces = Api::<Namespace>::all(rec.clone());

    // Created only as a project.
    for labels in [json!({}), json!({MANAGED: "false"}), json!({"app.kubernetes.io/part-of": "ambient"})] {
        let name = unique_name("confine-unlabelled");
        refused_by_policy(
            &format!("create a namespace labelled {labels}"),
            &create_namespace(&rec, &name, labels).await,
            &format!("creates only namespaces labelled {MANAGED}=true"),
        );
        assert!(Api::<Namespace>::all(env.admin()).get_opt(&name).await?.is_none(), "{name} exists");
    }
    let project = unique_name("confine-project");
    create_namespace(&rec, &project, json!({MANAGED: "true"})).await.context("creating a project namespace")?;

    // Everything it writes in a project, it may write there.
    let sas = Api::<ServiceAccount>::namespaced(env.admin(), &project);
    eventually("the project's default ServiceAccount", Duration::from_secs(60), || async {
        Ok(sas.get_opt("default").await?.map(drop))
    })
    .await?;
    for (what, r) in project_writes(&rec, &project, &unique_name("confine")).await {
        r.with_context(|| format!("{what} in the project {project}"))?;
    }

    // Its Jobs cannot reach the node.
    let jobs = Api::<Job>::namespaced(rec.clone(), &project);
    let container = json!({"name": "c", "image": "example.invalid/confine:1"});
    let with = |pod: Value, c: Value| -> Job {
        let mut spec = json!({"restartPolicy": "Never", "containers": [c]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), pod.as_object()) {
            spec.extend(extra.clone());
        }
        from(
            json!({"metadata": {"name": unique_name("confine-host")}, "spec": {"backoffLimit": 0, "template": {"spec": spec}}}),
        )
    };
    let container_with = |k: &str, v: Value| {
        let mut c = container.clone();
        c[k] = v;
        c
    };
    for (what, job) in [
        ("privileged", with(json!({}), container_with("securityContext", json!({"privileged": true})))),
        (
            "added capabilities",
            with(json!({}), container_with("securityContext", json!({"capabilities": {"add": ["SYS_ADMIN"]}}))),
        ),
        ("a host port", with(json!({}), container_with("ports", json!([{"containerPort": 80, "hostPort": 80}])))),
        ("the host network", with(json!({"hostNetwork": true}), container.clone())),
        ("the host PID namespace", with(json!({"hostPID": true}), container.clone())),
        (
            "a hostPath volume",
            with(
                json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                container_with("volumeMounts", json!([{"name": "root", "mountPath": "/host"}])),
            ),
        ),
    ] {
        refused_by_policy(
            &format!("a Job with {what} in the project"),
            &jobs.create(&PostParams::default(), &job).await.map(drop),
            "the reconciler's Jobs may not be privileged",
        );
    }

    // Changed only while it stays one.
    for label in [Value::Null, json!("false")] {
        let unlabel = json!({"metadata": {"labels": {MANAGED: label}}});
        refused_by_policy(
            &format!("set the project label to {label}"),
            &namespaces.patch(&project, &PatchParams::default(), &Patch::Merge(unlabel)).await.map(drop),
            &format!("may not remove the label {MANAGED}=true from namespace {project}"),
        );
    }
    let ns = Api::<Namespace>::all(env.admin()).get(&project).await?;
    assert_eq!(ns.metadata.labels.unwrap_or_default().get(MANAGED).map(String::as_str), Some("true"));

    // Deleted as a project.
    namespaces.delete(&project, &DeleteParams::default()).await.context("deleting the project namespace")?;
    Ok(())
}

/// Item 8: a tenant who owns a namespace that is not a project writes a ProjectSettings there
/// granting his group `admin`. The reconciler's ProjectSettings controller writes no RoleBinding
/// for it, and does not even try: the policy would refuse the write, so "no RoleBinding" alone
/// would not show the controller's own guard; its log shows no refused attempt either.
#[tokio::test]
async fn project_settings_outside_projects_get_no_role_bindings() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let admin = env.admin();
    let keys = BusKeys::shared(&env)?;
    let kubeconfig = Component::Reconciler.kubeconfig(&env).await?;
    let nats = env.nats_url().to_string();
    let reconciler = ServiceProcess::start(Component::Reconciler, |health| {
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--nats-url={nats}"),
            format!("--health-addr={health}"),
            format!("--command-verify-keys-file={}", keys.verify_keys_file.display()),
            format!("--sealing-key-file={}", keys.sealing_key_file.display()),
            "--log-format=text".into(),
            "--resync-seconds=5".into(),
        ]
    })
    .await?;

    // Bob owns a namespace of his own (the stock `admin` role there, as a namespace owner has
    // it): he may write a ProjectSettings in it (admin aggregates ambient's rights).
    let own = env.namespace("confine-own").await?;
    let rb: RoleBinding = from(json!({
        "metadata": {"name": "bob-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), &own).create(&PostParams::default(), &rb).await?;
    let bob = env.client_as(DemoUser::Bob).await?;
    let settings = |group: &str| {
        json!({
            "apiVersion": "vteam.ambient-code/v1alpha1",
            "kind": "ProjectSettings",
            "metadata": {"name": "projectsettings"},
            "spec": {"groupAccess": [{"groupName": group, "role": "admin"}]},
        })
    };
    let ps_api = |c: &kube::Client, ns: &str| Api::<ProjectSettings>::namespaced(c.clone(), ns);
    let pp = PatchParams::apply("confine-test").force();
    eventually("bob's ProjectSettings", Duration::from_secs(30), || async {
        // (his RoleBinding may take a moment to be authorized)
        Ok(ps_api(&bob, &own).patch("projectsettings", &pp, &Patch::Apply(settings("team-b"))).await.ok().map(drop))
    })
    .await?;

    // A project beside it, its settings written after bob's: the controller has passed bob's
    // once this one has its binding.
    let project = unique_name("confine-project");
    create_namespace(&admin, &project, json!({MANAGED: "true"})).await?;
    ps_api(&admin, &project).patch("projectsettings", &pp, &Patch::Apply(settings("team-a"))).await?;
    let permission = ListParams::default().labels("app=ambient-permission");
    let project_bindings = Api::<RoleBinding>::namespaced(admin.clone(), &project);
    eventually("the project's group RoleBinding", Duration::from_secs(60), || async {
        let items = project_bindings.list(&permission).await?.items;
        Ok(items
            .iter()
            .any(|rb| rb.subjects.iter().flatten().any(|s| s.kind == "Group" && s.name == "team-a"))
            .then_some(()))
    })
    .await?;
    // A resync (5 s) later the controller has looked at bob's settings again.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let own_bindings = Api::<RoleBinding>::namespaced(admin.clone(), &own).list(&ListParams::default()).await?.items;
    let names: Vec<String> = own_bindings.iter().filter_map(|rb| rb.metadata.name.clone()).collect();
    assert_eq!(names, ["bob-admin"], "RoleBindings in bob's namespace {own}");
    let ps = ps_api(&admin, &own).get("projectsettings").await?;
    assert_eq!(ps.status, None, "status written outside a project");
    let log = reconciler.log();
    let tried: Vec<&str> = log.lines().filter(|l| l.contains(own.as_str())).collect();
    assert!(tried.is_empty(), "the reconciler tried to act in {own}:\n{}", tried.join("\n"));
    Ok(())
}
