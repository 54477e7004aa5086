//! The cross-tenant permission matrix: every operation of the api's `/openapi.json` × caller
//! (no role, view, edit, admin; as a user, as a group member, as an access key) × own or foreign
//! project, each against the expected outcome written down in `expected` below, plus
//! mass-assignment probes of server-owned fields. One stack and a handful of projects for the
//! whole matrix; probes that delete something get a fresh object to delete. A scoped identity
//! (alice's token scoped to `user:info` by the dev cluster's test authenticator) is a row of the
//! matrix; `scoped_tokens_act_only_within_their_scopes` follows such a token through the api and
//! the reconciler.

use std::collections::BTreeSet;

use ambient_tests::http::{Client, Resp};
use ambient_tests::routes::{Params, Route, operations, sample_body};
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, SCOPES_EXTRA, ScopedToken, TestEnv, eventually, unique_name};
use events::commands::{CommandBody, ProjectCreate, SessionCreate};
use events::results::{FailureReason, Outcome};
use events::signing::CommandSigner;
use events::{Command, Principal, ProjectName, SessionName};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Nothing,
    View,
    Edit,
    Admin,
    /// Kubernetes' own `edit` ClusterRole (with what deploy/ aggregates into it), bound directly.
    StockEdit,
    /// Kubernetes' own `admin` ClusterRole, bound directly (e.g. by an OpenShift project template).
    StockAdmin,
}

impl Role {
    /// The built-in ClusterRole of a stock role.
    fn stock_cluster_role(self) -> Option<&'static str> {
        match self {
            Role::StockEdit => Some("edit"),
            Role::StockAdmin => Some("admin"),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    User,
    Group,
    Key,
    /// A user's token scoped to `user:info`: RBAC roles of the user, none of them usable.
    Scoped,
}

/// The expected answer class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// 2xx.
    Ok,
    /// 2xx, or 409 from the command itself (e.g. start on a running session): authorized.
    OkOrConflict,
    /// 403 with a JSON error.
    Forbidden,
    /// 404, with the same body as for a project that does not exist.
    NotFound,
    /// Authorized, and the feature does not exist here: 404 with `code: "not_available"`.
    NotAvailable,
}

impl Want {
    fn matches(self, s: StatusCode) -> bool {
        match self {
            Want::Ok => s.is_success(),
            Want::OkOrConflict => s.is_success() || s == StatusCode::CONFLICT,
            Want::Forbidden => s == StatusCode::FORBIDDEN,
            Want::NotFound | Want::NotAvailable => s == StatusCode::NOT_FOUND,
        }
    }
}

/// THE TABLE: the least role each project route needs; below it the answer is 403, except where
/// noted. A route missing here fails the test, so a new route must be given its row.
fn least_role(r: &Route) -> Option<(Role, Want)> {
    use Role::*;
    let row = match (r.method.as_str(), r.template.trim_start_matches("/api/projects/{project}")) {
        ("GET", "") | ("GET", "/access") | ("GET", "/runner-secrets/config") => (View, Want::Ok),
        ("GET", "/agentic-sessions") | ("GET", "/agentic-sessions/{session}") => (View, Want::Ok),
        ("GET", "/agentic-sessions/{session}/events") | ("GET", "/events") => (View, Want::Ok),
        ("GET", "/permissions") | ("GET", "/groups") => (View, Want::Ok),
        ("GET", "/agentic-sessions/{session}/messages") | ("GET", "/sessions/{session}/messages") => (View, Want::Ok),
        ("POST", "/agentic-sessions")
        | ("PUT", "/agentic-sessions/{session}")
        | ("DELETE", "/agentic-sessions/{session}") => (Edit, Want::Ok),
        ("POST", "/agentic-sessions/{session}/clone") => (Edit, Want::Ok),
        ("POST", "/agentic-sessions/{session}/start") | ("POST", "/agentic-sessions/{session}/stop") => {
            (Edit, Want::OkOrConflict)
        }
        // Chat input needs an interactive session; the probed one is not (409 once authorized).
        ("POST", "/agentic-sessions/{session}/messages") | ("POST", "/sessions/{session}/messages") => {
            (Edit, Want::OkOrConflict)
        }
        ("PUT", "") | ("DELETE", "") => (Admin, Want::Ok),
        ("POST", "/permissions") | ("DELETE", "/permissions/{subjectType}/{subjectName}") => (Admin, Want::Ok),
        ("POST", "/groups") | ("DELETE", "/groups/{group}") => (Admin, Want::Ok),
        ("GET", "/keys") | ("POST", "/keys") | ("DELETE", "/keys/{keyId}") => (Admin, Want::Ok),
        ("GET", "/runner-secrets") | ("PUT", "/runner-secrets") | ("PUT", "/runner-secrets/config") => {
            (Admin, Want::Ok)
        }
        ("GET", "/integration-secrets") | ("PUT", "/integration-secrets") => (Admin, Want::Ok),
        // The web UI's compatibility routes (api/src/routes/ui.rs) read like the session: its
        // page-load reads and quiet answers need what `GET` of the session needs...
        ("GET", "/agentic-sessions/{session}/k8s-resources")
        | ("GET", "/agentic-sessions/{session}/workflow/metadata")
        | ("GET", "/agentic-sessions/{session}/git/status")
        | ("GET", "/agentic-sessions/{session}/git/merge-status")
        | ("GET", "/agentic-sessions/{session}/git/list-branches")
        | ("GET", "/agentic-sessions/{session}/workspace")
        | ("POST", "/agentic-sessions/{session}/spawn-content-pod")
        | ("GET", "/agentic-sessions/{session}/content-pod-status")
        | ("DELETE", "/agentic-sessions/{session}/content-pod") => (View, Want::Ok),
        // ... and its click-only actions answer 404 `not_available` to whoever may see the
        // session (they change nothing, so no further right is exercised).
        ("POST", "/agentic-sessions/{session}/workflow")
        | ("POST", "/agentic-sessions/{session}/git/pull")
        | ("POST", "/agentic-sessions/{session}/git/push")
        | ("POST", "/agentic-sessions/{session}/git/synchronize")
        | ("POST", "/agentic-sessions/{session}/git/create-branch")
        | ("POST", "/agentic-sessions/{session}/git/configure-remote")
        | ("POST", "/agentic-sessions/{session}/repos")
        | ("DELETE", "/agentic-sessions/{session}/repos/{repo}") => (View, Want::NotAvailable),
        _ => return None,
    };
    Some(row)
}

/// Runner callbacks need the session's runner (a token bound to its pod) or `update
/// agenticsessions/status`, which no project role has: every role gets the missing-project
/// answer.
fn runner_only(r: &Route) -> bool {
    r.template.ends_with("/{session}/status") || r.template.ends_with("/{session}/displayname")
}

/// The stock `edit` ClusterRole: what deploy/ aggregates into it (sessions CRUD, settings read)
/// plus Kubernetes' own rules (ServiceAccounts and Secrets, but no RoleBindings and no `bind`).
/// Handing out a role needs `bind` on it, so an editor cannot create an access key of any role:
/// the escalation this row guards (an `edit` key-creator minting an admin key).
fn stock_edit(r: &Route) -> Option<Want> {
    let path = r.template.trim_start_matches("/api/projects/{project}");
    Some(match (r.method.as_str(), path) {
        ("POST", "/keys") => Want::Forbidden,
        // Kubernetes' edit role reads ServiceAccounts and Secrets and deletes and updates them.
        ("GET", "/keys") | ("DELETE", "/keys/{keyId}") => Want::Ok,
        ("GET", "/runner-secrets") | ("PUT", "/runner-secrets") => Want::Ok,
        ("GET", "/integration-secrets") | ("PUT", "/integration-secrets") => Want::Ok,
        // No RoleBinding reads or writes, no settings writes.
        ("GET", "/permissions") | ("GET", "/groups") => Want::Forbidden,
        _ => return expected(r, Role::Edit),
    })
}

/// Expected answer of a route in the caller's own project.
fn expected(r: &Route, role: Role) -> Option<Want> {
    if runner_only(r) {
        return Some(Want::NotFound);
    }
    match role {
        Role::StockEdit => return stock_edit(r),
        // The stock admin holds every permission of the project admin role (aggregated `bind`
        // included), so it answers as the project admin does.
        Role::StockAdmin => return expected(r, Role::Admin),
        _ => {}
    }
    let (least, allowed) = least_role(r)?;
    Some(if role == Role::Nothing {
        Want::NotFound
    } else if role >= least {
        allowed
    } else {
        Want::Forbidden
    })
}

/// Expected answer of a route outside projects, by caller kind.
fn expected_global(r: &Route, kind: Kind) -> Option<Want> {
    Some(match (r.method.as_str(), r.template.as_str()) {
        ("GET", "/api/projects") | ("GET", "/api/me") => Want::Ok,
        ("GET", "/openapi.json") => Want::Ok,
        // The event schemas are public, like the document.
        ("GET", "/api/schemas/events") | ("GET", "/api/schemas/events/{type}") => Want::Ok,
        // The web UI's compatibility routes: public facts, and a GitHub App nobody can connect.
        ("GET", "/api/cluster-info") | ("GET", "/api/workflows/ootb") => Want::Ok,
        ("GET", "/api/auth/github/status") | ("POST", "/api/auth/github/disconnect") => Want::Ok,
        ("POST", "/api/auth/github/install") => Want::NotAvailable,
        // Users self-provision; access keys are scoped to one project and create none; nor
        // does a token whose scopes do not cover it.
        ("POST", "/api/projects") if kind == Kind::Key || kind == Kind::Scoped => Want::Forbidden,
        ("POST", "/api/projects") => Want::Ok,
        // A command id that is not the caller's.
        ("GET", "/api/commands/{id}") => Want::NotFound,
        _ => return None,
    })
}

struct Caller {
    label: String,
    kind: Kind,
    role: Role,
    token: String,
    /// The project where it has `role`.
    own: String,
}

/// A project where carol has `role` as a user, team-b (bob) as a group, and a key has it.
struct Fixture {
    project: String,
    key: Option<String>,
}

struct Env {
    c: Client,
    alice: String,
    admin: kube::Client,
}

impl Env {
    /// One probe; an SSE stream that opens counts as 200 and is closed at once.
    async fn call(&self, m: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
        if m == Method::GET && path.ends_with("/events") {
            return match ambient_tests::sse::open(&self.c, path, token, None).await {
                Ok(_stream) => Resp { status: StatusCode::OK, body: Value::Null, headers: Default::default() },
                Err(refused) => refused,
            };
        }
        self.c.call(m, path, Some(token), body, &[]).await
    }

    async fn ok(&self, m: Method, path: &str, body: Value) -> Resp {
        let r = self.call(m.clone(), path, &self.alice, Some(body)).await;
        assert!(r.status.is_success(), "setup {m} {path}: {r:?}");
        r
    }

    async fn fixture(&self, role: Role) -> Fixture {
        let p = unique_name(&format!("perm-{role:?}").to_lowercase());
        self.ok(Method::POST, "/api/projects", json!({"name": p})).await;
        self.ok(
            Method::POST,
            &format!("/api/projects/{p}/agentic-sessions"),
            json!({"name": "s1", "prompt": "probe target", "environmentVariables": {"KWOK_RUN_DURATION": "1h"}}),
        )
        .await;
        if let Some(cluster_role) = role.stock_cluster_role() {
            // Bound by the cluster admin, as a platform's own tooling would: the api grants
            // only the project roles.
            ambient_tests::bind_cluster_role(&self.admin, &p, "carol", cluster_role)
                .await
                .expect("stock binding created");
            return Fixture { project: p, key: None };
        }
        let r = match role {
            Role::Nothing | Role::StockEdit | Role::StockAdmin => return Fixture { project: p, key: None },
            Role::View => "view",
            Role::Edit => "edit",
            Role::Admin => "admin",
        };
        self.ok(
            Method::POST,
            &format!("/api/projects/{p}/permissions"),
            json!({"subjectType": "user", "subjectName": "carol", "role": r}),
        )
        .await;
        self.ok(Method::POST, &format!("/api/projects/{p}/groups"), json!({"groupName": "team-b", "role": r})).await;
        let k = self
            .ok(Method::POST, &format!("/api/projects/{p}/keys"), json!({"name": format!("probe-{r}"), "role": r}))
            .await;
        Fixture { project: p, key: k.body["key"].as_str().map(String::from) }
    }

    /// Prepares what a probe acts on; destructive probes get their own object.
    async fn target(&self, route: &Route, project: &str, n: usize) -> Params {
        let mut params = Params::new(project, "s1");
        match (route.method.as_str(), route.template.rsplit('/').next().unwrap_or("")) {
            ("DELETE", "{session}") => {
                let s = format!("doomed-{n}");
                self.ok(
                    Method::POST,
                    &format!("/api/projects/{project}/agentic-sessions"),
                    json!({"name": s, "prompt": "to delete"}),
                )
                .await;
                params.session = s;
            }
            ("DELETE", "{subjectName}") => {
                let who = format!("doomed-{n}");
                self.ok(
                    Method::POST,
                    &format!("/api/projects/{project}/permissions"),
                    json!({"subjectType": "user", "subjectName": who, "role": "view"}),
                )
                .await;
                params.subject = ("user".into(), who);
            }
            ("DELETE", "{group}") => {
                let g = format!("doomed-{n}");
                self.ok(
                    Method::POST,
                    &format!("/api/projects/{project}/groups"),
                    json!({"groupName": g, "role": "view"}),
                )
                .await;
                params.group = g;
            }
            ("DELETE", "{keyId}") => {
                let r = self
                    .ok(
                        Method::POST,
                        &format!("/api/projects/{project}/keys"),
                        json!({"name": format!("doomed-{n}"), "role": "view"}),
                    )
                    .await;
                params.key_id = r.body["id"].as_str().unwrap_or_default().to_string();
            }
            _ => {}
        }
        params
    }
}

#[tokio::test]
async fn permission_matrix() {
    let env = TestEnv::shared().await.unwrap();
    let api_args =
        vec!["--rate-limit-rps=1000".into(), "--rate-limit-burst=10000".into(), "--result-timeout=60s".into()];
    let s: Stack = Stack::start(&env, StackOptions { api_args, ..Default::default() }).await.expect("stack starts");
    let e =
        Env { c: Client::new(&s.api_url), alice: env.token(DemoUser::Alice).unwrap().to_string(), admin: env.admin() };
    let carol = env.token(DemoUser::Carol).unwrap().to_string();
    let bob = env.token(DemoUser::Bob).unwrap().to_string();

    let doc = e.c.call(Method::GET, "/openapi.json", None, None, &[]).await.body;
    let routes = operations(&doc);
    assert!(routes.len() >= 37, "the document lists {} operations", routes.len());
    let unknown: Vec<String> = routes
        .iter()
        .filter(|r| {
            if r.in_project() { expected(r, Role::View).is_none() } else { expected_global(r, Kind::User).is_none() }
        })
        .map(Route::label)
        .collect();
    assert!(unknown.is_empty(), "operations without a row in the expected-outcome table: {unknown:?}");

    // The foreign project: nobody probing has any role there.
    let foreign = e.fixture(Role::Nothing).await;
    let missing = unique_name("perm-missing");
    let mut callers = vec![
        Caller {
            label: "carol (user, no role)".into(),
            kind: Kind::User,
            role: Role::Nothing,
            token: carol.clone(),
            own: foreign.project.clone(),
        },
        Caller {
            label: "bob (group, no role)".into(),
            kind: Kind::Group,
            role: Role::Nothing,
            token: bob.clone(),
            own: foreign.project.clone(),
        },
    ];
    for role in [Role::View, Role::Edit, Role::Admin] {
        let f = e.fixture(role).await;
        let key = f.key.clone().expect("a key");
        callers.push(Caller {
            label: format!("carol (user, {role:?})"),
            kind: Kind::User,
            role,
            token: carol.clone(),
            own: f.project.clone(),
        });
        callers.push(Caller {
            label: format!("bob (group team-b, {role:?})"),
            kind: Kind::Group,
            role,
            token: bob.clone(),
            own: f.project.clone(),
        });
        callers.push(Caller {
            label: format!("key ({role:?})"),
            kind: Kind::Key,
            role,
            token: key,
            own: f.project.clone(),
        });
    }
    for role in [Role::StockEdit, Role::StockAdmin] {
        let f = e.fixture(role).await;
        callers.push(Caller {
            label: format!("carol (user, {role:?})"),
            kind: Kind::User,
            role,
            token: carol.clone(),
            own: f.project.clone(),
        });
    }
    // alice's own token scoped to `user:info`: RBAC makes her admin of every fixture project,
    // but the scope covers nothing in a project, so she sees none (the missing-project answer).
    let admin_fixture = callers.iter().find(|c| c.role == Role::Admin).expect("admin fixture").own.clone();
    let scoped = env.scoped_token(ScopedToken::AliceInfo).unwrap().to_string();
    callers.push(Caller {
        label: "alice [user:info] (admin by RBAC)".into(),
        kind: Kind::Scoped,
        role: Role::Nothing,
        token: scoped,
        own: admin_fixture,
    });
    // Give grants time to reach the api's caches (revocations and grants take effect within 5 s).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    let mut total = 0usize;
    let mut wrong: Vec<String> = Vec::new();
    let mut record = |label: String, want: Want, r: &Resp, extra_ok: bool| {
        total += 1;
        let not_available = r.body["code"] == "not_available";
        // A feature that does not exist is told apart from an object that does not.
        let code_ok = if want == Want::NotAvailable { not_available } else { !not_available };
        if !(want.matches(r.status) && extra_ok && code_ok && r.body.get("error").is_none_or(Value::is_string)) {
            wrong.push(format!("{label}: want {want:?}, got {} {}", r.status, r.body));
        }
    };
    let mut n = 0;
    let mut global_done = BTreeSet::new();
    for caller in &callers {
        for route in &routes {
            n += 1;
            if !route.in_project() {
                // Once per identity (the same user holds several roles).
                if !global_done.insert((caller.token.clone(), route.label())) {
                    continue;
                }
                let want = expected_global(route, caller.kind).unwrap_or(Want::NotFound);
                let body = sample_body(route, &caller.own, &unique_name("perm-new"));
                let r =
                    e.c.call(
                        route.method(),
                        &Params::new(&caller.own, "s1").fill(&route.template),
                        Some(&caller.token),
                        body,
                        &[],
                    )
                    .await;
                record(format!("{} {}", caller.label, route.label()), want, &r, true);
                continue;
            }
            // DELETE project last (below), on projects of its own.
            if route.method == "DELETE" && route.template == "/api/projects/{project}" {
                continue;
            }
            let unique = unique_name("probe");
            let body = sample_body(route, &caller.own, &unique);
            // Foreign: the same answer as a project that does not exist.
            let there = e
                .call(
                    route.method(),
                    &Params::new(&foreign.project, "s1").fill(&route.template),
                    &caller.token,
                    body.clone(),
                )
                .await;
            let absent = e
                .call(route.method(), &Params::new(&missing, "s1").fill(&route.template), &caller.token, body.clone())
                .await;
            let same = there.body == absent.body;
            if caller.role != Role::Nothing {
                record(format!("{} {} [foreign]", caller.label, route.label()), Want::NotFound, &there, same);
            }
            // Own project.
            let want = expected(route, caller.role).expect("checked above");
            let params = e.target(route, &caller.own, n).await;
            let r = e.call(route.method(), &params.fill(&route.template), &caller.token, body).await;
            let same = caller.role != Role::Nothing || r.body == absent.body;
            record(format!("{} {} [own]", caller.label, route.label()), want, &r, same);
        }
    }
    // DELETE project: allowed callers delete a project of their own kind made for it.
    let del = Route { method: "DELETE".into(), template: "/api/projects/{project}".into() };
    for caller in &callers {
        let want = expected(&del, caller.role).expect("a row");
        let project = if want == Want::Ok {
            let f = e.fixture(caller.role).await;
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            let token = match caller.kind {
                Kind::Key => f.key.clone().expect("a key"),
                _ => caller.token.clone(),
            };
            let r = e.call(Method::DELETE, &format!("/api/projects/{}", f.project), &token, None).await;
            record(format!("{} {} [own]", caller.label, del.label()), want, &r, true);
            continue;
        } else {
            caller.own.clone()
        };
        let r = e.call(Method::DELETE, &format!("/api/projects/{project}"), &caller.token, None).await;
        record(format!("{} {} [own]", caller.label, del.label()), want, &r, true);
        if caller.role != Role::Nothing {
            let r = e.call(Method::DELETE, &format!("/api/projects/{}", foreign.project), &caller.token, None).await;
            record(format!("{} {} [foreign]", caller.label, del.label()), Want::NotFound, &r, true);
        }
    }

    // Mass assignment: server-owned fields are refused with a 4xx naming the field.
    let admin_p = &callers.iter().find(|c| c.role == Role::Admin).expect("admin fixture").own;
    let other = &foreign.project;
    let sp = format!("/api/projects/{admin_p}/agentic-sessions");
    let managed = json!({"ambient-code.io/managed": "true"});
    let evil = unique_name("perm-evil");
    let probes: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            sp.clone(),
            json!({"name": "ma1", "prompt": "x", "userContext": {"userId": "mallory", "groups": ["system:masters"]}}),
            "userContext",
        ),
        (Method::POST, sp.clone(), json!({"name": "ma2", "prompt": "x", "status": {"phase": "Completed"}}), "status"),
        (Method::POST, sp.clone(), json!({"name": "ma3", "prompt": "x", "metadata": {"namespace": other}}), "metadata"),
        (Method::POST, sp.clone(), json!({"name": "ma4", "prompt": "x", "namespace": other}), "namespace"),
        (Method::PUT, format!("{sp}/s1"), json!({"userContext": {"userId": "mallory"}}), "userContext"),
        (Method::PUT, format!("{sp}/s1"), json!({"status": {"phase": "Completed"}}), "status"),
        (Method::PUT, format!("{sp}/s1"), json!({"metadata": {"labels": {"x": "y"}}}), "metadata"),
        (
            Method::POST,
            format!("{sp}/s1/clone"),
            json!({"targetProject": admin_p, "newSessionName": "ma5", "userContext": {"userId": "mallory"}}),
            "userContext",
        ),
        (Method::POST, "/api/projects".into(), json!({"name": evil, "labels": managed}), "labels"),
        (Method::POST, "/api/projects".into(), json!({"name": evil, "namespace": other}), "namespace"),
        (
            Method::PUT,
            format!("/api/projects/{admin_p}"),
            json!({"labels": {"ambient-code.io/managed": "false"}}),
            "labels",
        ),
        (Method::PUT, format!("/api/projects/{admin_p}"), json!({"name": other}), "name"),
        (
            Method::POST,
            format!("/api/projects/{admin_p}/permissions"),
            json!({"subjectType": "user", "subjectName": "mallory", "role": "admin", "namespace": other}),
            "namespace",
        ),
        (
            Method::POST,
            format!("/api/projects/{admin_p}/keys"),
            json!({"name": "ma-key", "namespace": other}),
            "namespace",
        ),
    ];
    for (m, path, body, field) in probes {
        let r = e.call(m.clone(), &path, &e.alice, Some(body)).await;
        let names_field = r.body["field"] == field || r.body["error"].as_str().is_some_and(|s| s.contains(field));
        total += 1;
        if !(r.status.is_client_error() && names_field) {
            wrong.push(format!(
                "mass assignment {m} {path} [{field}]: want 4xx naming {field}, got {} {}",
                r.status, r.body
            ));
        }
    }
    // ... and had no effect in the cluster.
    let s1 = e.call(Method::GET, &format!("{sp}/s1"), &e.alice, None).await.body;
    total += 1;
    if s1["spec"]["userContext"]["userId"] != "alice"
        || s1["spec"]["prompt"] != "probe target"
            && !s1["spec"]["prompt"].as_str().is_some_and(|p| p.starts_with("probe "))
    {
        wrong.push(format!("mass assignment changed s1: {s1}"));
    }
    let names: Vec<String> = e.call(Method::GET, &sp, &e.alice, None).await.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect();
    total += 1;
    if names.iter().any(|n| n.starts_with("ma")) {
        wrong.push(format!("a refused session was created: {names:?}"));
    }
    let ns = Api::<Namespace>::all(env.admin());
    total += 1;
    if ns.get_opt(&evil).await.unwrap().is_some() {
        wrong.push(format!("a refused project {evil} was created"));
    }
    let admin_ns = ns.get(admin_p).await.unwrap();
    total += 1;
    if admin_ns.metadata.labels.unwrap_or_default().get("ambient-code.io/managed").map(String::as_str) != Some("true") {
        wrong.push(format!("{admin_p} lost its managed label"));
    }
    let others =
        Api::<events::crd::AgenticSession>::namespaced(env.admin(), other).list(&Default::default()).await.unwrap();
    total += 1;
    if others.items.iter().any(|s| s.metadata.name.as_deref().is_some_and(|n| n.starts_with("ma"))) {
        wrong.push(format!("a session landed in {other}"));
    }

    let correct = total - wrong.len();
    println!("permission matrix: {total} probes, {correct} correct");
    for w in &wrong {
        println!("WRONG {w}");
    }
    assert!(wrong.is_empty(), "{} of {total} probes wrong:\n{}", wrong.len(), wrong.join("\n"));
}

/// The session-create command a token scoped to `scopes` would make the api publish.
fn scoped_create(project: &ProjectName, name: &str, scopes: &[&str]) -> Command {
    let body = CommandBody::SessionCreate(SessionCreate::new(
        SessionName::new(name).unwrap(),
        serde_json::from_value(json!({"prompt": "scoped"})).unwrap(),
    ));
    Command::new(project.clone(), scoped_alice(scopes), body)
}

/// alice as the test authenticator resolves a token of hers scoped to `scopes`.
fn scoped_alice(scopes: &[&str]) -> Principal {
    let mut who = Principal {
        user: "alice".into(),
        uid: "uid-alice".into(),
        groups: vec!["team-a".into(), "system:authenticated".into()],
        ..Default::default()
    };
    who.extra.insert(SCOPES_EXTRA.into(), scopes.iter().map(|s| s.to_string()).collect());
    who
}

/// alice's token scoped to `user:info` (deploy/dev/authwebhook.py) reaches nothing in her own
/// project through the api, and a command carrying that scope, published straight to the bus
/// with the api's key as if the api had let it through, is refused by the reconciler at apply
/// time; the same alice with a `user:full` token keeps her rights on both paths.
#[tokio::test]
async fn scoped_tokens_act_only_within_their_scopes() {
    let env = TestEnv::shared().await.unwrap();
    let s: Stack = Stack::start(&env, StackOptions::default()).await.expect("stack starts");
    let c = Client::new(&s.api_url);
    let alice = env.token(DemoUser::Alice).unwrap().to_string();
    let info = env.scoped_token(ScopedToken::AliceInfo).unwrap().to_string();
    let full = env.scoped_token(ScopedToken::AliceFull).unwrap().to_string();
    let p = unique_name("scoped");
    let r = c.post("/api/projects", &alice, json!({"name": p})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // The dev cluster's authorizer itself: the same list straight at the API server.
    let direct = |token: String| {
        let (env, p) = (env.clone(), p.clone());
        async move {
            let client = env.client_with_token(&token).await.unwrap();
            Api::<events::crd::AgenticSession>::namespaced(client, &p).list(&Default::default()).await.map(|_| ())
        }
    };
    direct(full.clone()).await.expect("a user:full token lists alice's sessions at the API server");
    let refused = direct(info.clone()).await.expect_err("a user:info token lists alice's sessions at the API server");
    assert_eq!(ambient_tests::api_status(&refused), Some(403), "{refused}");

    // The api shows the identity with its extra, exactly as the TokenReview resolved it.
    let me = c.get("/api/me", &info).await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.body);
    assert_eq!(me.body["userId"], "alice");
    assert_eq!(me.body["extra"][SCOPES_EXTRA], json!(["user:info"]), "{}", me.body);
    assert_eq!(c.get("/api/me", &alice).await.body["extra"], json!({}));

    // user:full: alice's rights, unchanged.
    let sessions = format!("/api/projects/{p}/agentic-sessions");
    let r = c.get(&sessions, &full).await;
    assert_eq!(r.status, StatusCode::OK, "full token lists sessions: {:?}", r.body);
    let r = c.post(&sessions, &full, json!({"name": "by-full", "prompt": "x"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "full token creates a session: {:?}", r.body);
    let r = c
        .post(
            &format!("/api/projects/{p}/permissions"),
            &full,
            json!({"subjectType": "user", "subjectName": "dave", "role": "view"}),
        )
        .await;
    assert!(r.status.is_success(), "full token grants: {:?}", r.body);

    // user:info: nothing in the project alice administers, and no project creation.
    let missing = unique_name("scoped-missing");
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/projects/{p}"), None),
        (Method::GET, sessions.clone(), None),
        (Method::POST, sessions.clone(), Some(json!({"name": "by-info", "prompt": "x"}))),
        (
            Method::POST,
            format!("/api/projects/{p}/permissions"),
            Some(json!({"subjectType": "user", "subjectName": "mallory", "role": "admin"})),
        ),
        (Method::DELETE, format!("/api/projects/{p}"), None),
    ];
    for (m, path, body) in probes {
        let r = c.call(m.clone(), &path, Some(&info), body.clone(), &[]).await;
        let absent = c.call(m.clone(), &path.replace(&p, &missing), Some(&info), body, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "user:info token {m} {path}: {:?}", r.body);
        assert_eq!(r.body, absent.body, "{m} {path}: not the missing-project answer");
    }
    let r = c.get("/api/projects", &info).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let listed = r.body.to_string();
    assert!(!listed.contains(&p), "user:info token lists {p}: {listed}");
    let r = c.post("/api/projects", &info, json!({"name": unique_name("scoped-new")})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "user:info token creates a project: {:?}", r.body);

    // Nothing of it happened.
    let names: Vec<String> = c.get(&sessions, &alice).await.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert!(names.contains(&"by-full".to_string()) && !names.contains(&"by-info".to_string()), "{names:?}");
    let grants = c.get(&format!("/api/projects/{p}/permissions"), &alice).await.body.to_string();
    assert!(!grants.contains("mallory"), "{grants}");

    // Apply time: signed commands as the api would publish them had it let them through.
    let js = env.jetstream();
    let project = ProjectName::new(&p).unwrap();
    let signer = CommandSigner::from_pem(&std::fs::read_to_string(&s.keys.signing_key_file).unwrap()).unwrap();
    let outcome = |cmd: Command| {
        let js = js.clone();
        let signer = &signer;
        async move {
            let out = events::wire::encode_command(&cmd, signer);
            js.publish_with_headers(out.subject, out.headers, out.payload).await.unwrap().await.unwrap();
            let subject = events::subjects::result(&cmd.project, cmd.id);
            eventually("the command's result", std::time::Duration::from_secs(60), || {
                let (js, subject) = (js.clone(), subject.clone());
                async move {
                    let stream = js.get_stream(events::streams::RESULTS_STREAM).await?;
                    Ok(stream
                        .direct_get_last_for_subject(subject)
                        .await
                        .ok()
                        .and_then(|m| events::wire::decode_result(Some(&m.headers), &m.payload).ok()))
                }
            })
            .await
            .unwrap()
            .outcome
        }
    };
    match outcome(scoped_create(&project, "bus-info", &["user:info"])).await {
        Outcome::Failed { reason: FailureReason::Forbidden, .. } => {}
        other => panic!("the reconciler applied a user:info command: {other:?}"),
    }
    match outcome(scoped_create(&project, "bus-full", &["user:full"])).await {
        Outcome::Succeeded { .. } => {}
        other => panic!("the reconciler refused a user:full command: {other:?}"),
    }
    let sessions_api = kube::Api::<events::crd::AgenticSession>::namespaced(env.admin(), &p);
    assert!(sessions_api.get_opt("bus-info").await.unwrap().is_none(), "the user:info command created its session");
    assert!(sessions_api.get_opt("bus-full").await.unwrap().is_some());
    // Nor does a user:info command create a project.
    let new = ProjectName::new(unique_name("scoped-bus")).unwrap();
    let create = Command::new(
        new.clone(),
        scoped_alice(&["user:info"]),
        CommandBody::ProjectCreate(ProjectCreate { display_name: None, description: None }),
    );
    match outcome(create).await {
        Outcome::Failed { reason: FailureReason::Forbidden, .. } => {}
        other => panic!("the reconciler created a project for a user:info command: {other:?}"),
    }
    assert!(Api::<Namespace>::all(env.admin()).get_opt(new.as_str()).await.unwrap().is_none());
}
