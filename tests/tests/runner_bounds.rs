//! Runner resources are bounded (issue 15, item 3, and the environment part of item 8), played
//! as a hostile tenant against a real stack:
//!
//! - every project gets a ResourceQuota and a LimitRange, owned by its Namespace, that its own
//!   admin can neither change nor delete, and that come back when deleted;
//! - out-of-bounds `resourceOverrides` (a priority class off the allow-list, CPU or memory
//!   beyond the maxima, no quantity at all) and platform environment names: 422 naming the
//!   field, nothing created;
//! - the same rule again at apply time: a signed command the api never saw, a session written
//!   straight to the cluster by the tenant, a clone of it;
//! - bounded overrides reach the runner pod (request = limit, the allowed priority class), and
//!   a runner without overrides gets the LimitRange's defaults;
//! - a key of the project's runner Secret wins over a session variable of the same name.
//!
//! Each part is checked and reported on its own, so a run shows every control that is missing.

use std::time::Duration;

use ambient_tests::components::BusKeys;
use ambient_tests::http::Client;
use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, api_status, eventually, unique_name};
use anyhow::{Context as _, anyhow, bail, ensure};
use events::commands::{CommandBody, SessionClone, SessionCreate};
use events::crd::AgenticSession;
use events::results::Outcome;
use events::signing::CommandSigner;
use events::{Command, Principal, ProjectName, SessionName};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, LimitRange, Namespace, Pod, ResourceQuota};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The one priority class the operator allows in this test.
const ALLOWED: &str = "ambient-test-runner";
const QUOTA: &str = "ambient-project-quota";
const LIMITS: &str = "ambient-project-limits";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runner_resources_are_bounded() {
    let env = TestEnv::shared().await.unwrap();
    ensure_priority_class(&env).await.unwrap();
    let bounds = vec![format!("--runner-priority-classes={ALLOWED}")];
    let api_args = [
        bounds.clone(),
        vec!["--rate-limit-rps=1000".into(), "--rate-limit-burst=10000".into(), "--result-timeout=60s".into()],
    ]
    .concat();
    let stack = Stack::start(&env, StackOptions { api_args, reconciler_args: bounds, ..Default::default() })
        .await
        .expect("stack starts");
    let t = T {
        env: &env,
        stack: &stack,
        c: Client::new(&stack.api_url),
        alice: env.token(DemoUser::Alice).unwrap().to_string(),
        project: unique_name("bounds"),
    };
    let r = t.c.post("/api/projects", &t.alice, json!({"name": t.project})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    let mut failed = Vec::new();
    for (what, result) in [
        (
            "a new project has its ResourceQuota and LimitRange, which its admin cannot change",
            t.quota_and_limits().await,
        ),
        (
            "out-of-bounds overrides and platform variables: 422 naming the field, nothing created",
            t.refused_at_the_edge().await,
        ),
        (
            "bounded overrides reach the runner pod; defaults come from the LimitRange",
            t.bounded_overrides_reach_the_pod().await,
        ),
        ("a command the api never saw is refused at apply time", t.refused_at_apply_time().await),
        (
            "a session written straight to the cluster is refused before its Job; so is its clone",
            t.refused_before_the_job().await,
        ),
        ("a runner-secret key wins over a session variable of the same name", t.runner_secret_wins().await),
    ] {
        match result {
            Ok(()) => println!("ok: {what}"),
            Err(e) => {
                println!("FAILED: {what}: {e:#}");
                failed.push(format!("{what}: {e:#}"));
            }
        }
    }
    let _ = t.c.delete(&format!("/api/projects/{}", t.project), &t.alice).await;
    assert!(
        !stack.api.log().contains("panicked") && !stack.reconciler.log().contains("panicked"),
        "a service panicked"
    );
    assert!(failed.is_empty(), "{} of 6 failed:\n{}", failed.len(), failed.join("\n"));
}

async fn ensure_priority_class(env: &TestEnv) -> anyhow::Result<()> {
    let pc = PriorityClass {
        metadata: ObjectMeta { name: Some(ALLOWED.into()), ..Default::default() },
        value: 1000,
        ..Default::default()
    };
    match Api::<PriorityClass>::all(env.admin()).create(&PostParams::default(), &pc).await {
        Ok(_) => Ok(()),
        Err(e) if api_status(&e) == Some(409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

struct T<'a> {
    env: &'a TestEnv,
    stack: &'a Stack,
    c: Client,
    alice: String,
    project: String,
}

fn quantity(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(String::from)
}

impl T<'_> {
    fn sessions_path(&self) -> String {
        format!("/api/projects/{}/agentic-sessions", self.project)
    }

    async fn alice_kube(&self) -> anyhow::Result<kube::Client> {
        self.env.client_as(DemoUser::Alice).await
    }

    async fn session_in_cluster(&self, name: &str) -> anyhow::Result<Option<AgenticSession>> {
        Ok(Api::<AgenticSession>::namespaced(self.env.admin(), &self.project).get_opt(name).await?)
    }

    async fn job(&self, session: &str) -> anyhow::Result<Job> {
        let jobs = Api::<Job>::namespaced(self.env.admin(), &self.project);
        let name = format!("{session}-job");
        eventually(&format!("Job {name}"), WAIT, || {
            let (jobs, name) = (jobs.clone(), name.clone());
            async move { Ok(jobs.get_opt(&name).await?) }
        })
        .await
    }

    async fn pod(&self, session: &str) -> anyhow::Result<Pod> {
        let pods = Api::<Pod>::namespaced(self.env.admin(), &self.project);
        let lp = ListParams::default().labels(&format!("job-name={session}-job"));
        eventually(&format!("the runner pod of {session}"), WAIT, || {
            let (pods, lp) = (pods.clone(), lp.clone());
            async move { Ok(pods.list(&lp).await?.items.into_iter().next()) }
        })
        .await
    }

    async fn phase(&self, session: &str, want: &str) -> anyhow::Result<AgenticSession> {
        eventually(&format!("{session} in phase {want}"), WAIT, || async move {
            let s = self.session_in_cluster(session).await?;
            Ok(s.filter(|s| s.status.as_ref().and_then(|st| st.phase).is_some_and(|p| p.as_str() == want)))
        })
        .await
    }

    /// Every project gets both objects from the operator's defaults, owned by its Namespace; its
    /// admin can neither patch nor delete them; deleted (by a cluster admin), they come back.
    async fn quota_and_limits(&self) -> anyhow::Result<()> {
        let admin = self.env.admin();
        let ns = Api::<Namespace>::all(admin.clone()).get(&self.project).await?;
        let quotas = Api::<ResourceQuota>::namespaced(admin.clone(), &self.project);
        let ranges = Api::<LimitRange>::namespaced(admin.clone(), &self.project);
        let q = eventually("the project's ResourceQuota", Duration::from_secs(30), || async {
            Ok(quotas.get_opt(QUOTA).await?)
        })
        .await?;
        let hard = serde_json::to_value(q.spec.as_ref().and_then(|s| s.hard.clone()))?;
        for (k, v) in [
            ("requests.cpu", "20"),
            ("requests.memory", "80Gi"),
            ("limits.cpu", "100"),
            ("limits.memory", "200Gi"),
            ("pods", "100"),
            ("count/agenticsessions.vteam.ambient-code", "5k"),
            ("count/serviceaccounts", "1k"),
            ("count/secrets", "500"),
            ("requests.ephemeral-storage", "200Gi"),
            ("limits.ephemeral-storage", "1000Gi"),
        ] {
            ensure!(quantity(&hard, k).as_deref() == Some(v), "quota {k}: {hard}");
        }
        let lr = eventually("the project's LimitRange", Duration::from_secs(30), || async {
            Ok(ranges.get_opt(LIMITS).await?)
        })
        .await?;
        let item = serde_json::to_value(&lr.spec.as_ref().context("LimitRange spec")?.limits)?;
        ensure!(item[0]["type"] == "Container", "{item}");
        ensure!(
            item[0]["max"] == json!({"cpu": "4", "memory": "8Gi", "ephemeral-storage": "20Gi"}),
            "LimitRange max is the runner bounds: {item}"
        );
        ensure!(item[0]["default"] == json!({"cpu": "1", "memory": "2Gi", "ephemeral-storage": "10Gi"}), "{item}");
        ensure!(
            item[0]["defaultRequest"] == json!({"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "1Gi"}),
            "{item}"
        );
        for meta in [&q.metadata, &lr.metadata] {
            let owners = meta.owner_references.clone().unwrap_or_default();
            ensure!(
                owners.iter().any(|o| o.kind == "Namespace"
                    && o.name == self.project
                    && Some(&o.uid) == ns.metadata.uid.as_ref()),
                "{:?} is not owned by its Namespace: {owners:?}",
                meta.name
            );
        }

        // The project's admin (alice created it) cannot loosen or remove either.
        let alice = self.alice_kube().await?;
        let a_quotas = Api::<ResourceQuota>::namespaced(alice.clone(), &self.project);
        let a_ranges = Api::<LimitRange>::namespaced(alice.clone(), &self.project);
        let loosen_quota = json!({"spec": {"hard": {"requests.cpu": "100000", "pods": "100000"}}});
        let loosen_range = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1000"}}]}});
        let attempts = [
            (
                "patch the quota",
                a_quotas.patch(QUOTA, &PatchParams::default(), &Patch::Merge(&loosen_quota)).await.map(|_| ()),
            ),
            ("delete the quota", a_quotas.delete(QUOTA, &DeleteParams::default()).await.map(|_| ())),
            (
                "patch the LimitRange",
                a_ranges.patch(LIMITS, &PatchParams::default(), &Patch::Merge(&loosen_range)).await.map(|_| ()),
            ),
            ("delete the LimitRange", a_ranges.delete(LIMITS, &DeleteParams::default()).await.map(|_| ())),
        ];
        for (what, r) in attempts {
            match r {
                Err(e) if api_status(&e) == Some(403) => {}
                other => bail!("the project admin could {what}: {other:?}"),
            }
        }
        // Through the api there is no route for them at all; and the objects are unchanged.
        ensure!(quotas.get(QUOTA).await?.spec == q.spec, "the quota changed");

        // Applied once: the controller's later passes (its own writes wake it) find both current.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = self.stack.reconciler.log();
        let applies = log
            .lines()
            .filter(|l| {
                l.contains("applied the project's ResourceQuota, LimitRange and runner ServiceAccount")
                    && l.contains(self.project.as_str())
            })
            .count();
        ensure!(applies == 1, "the project's limits were applied {applies} times");

        // Level-triggered: a deleted quota or LimitRange is put back.
        let old = (q.metadata.uid.clone(), lr.metadata.uid.clone());
        quotas.delete(QUOTA, &DeleteParams::default()).await?;
        ranges.delete(LIMITS, &DeleteParams::default()).await?;
        eventually("the quota and LimitRange put back", Duration::from_secs(30), || async {
            let (q, r) = (quotas.get_opt(QUOTA).await?, ranges.get_opt(LIMITS).await?);
            Ok(match (q, r) {
                (Some(q), Some(r)) if (q.metadata.uid.clone(), r.metadata.uid.clone()) != old => Some(()),
                _ => None,
            })
        })
        .await?;
        Ok(())
    }

    /// 422 naming the field; nothing reaches the cluster.
    async fn refused_at_the_edge(&self) -> anyhow::Result<()> {
        let cases = [
            (
                "pc-critical",
                json!({"resourceOverrides": {"priorityClass": "system-node-critical"}}),
                "resourceOverrides.priorityClass",
            ),
            (
                "pc-cluster",
                json!({"resourceOverrides": {"priorityClass": "system-cluster-critical"}}),
                "resourceOverrides.priorityClass",
            ),
            ("cpu-huge", json!({"resourceOverrides": {"cpu": "1000"}}), "resourceOverrides.cpu"),
            ("cpu-just-over", json!({"resourceOverrides": {"cpu": "4001m"}}), "resourceOverrides.cpu"),
            ("cpu-words", json!({"resourceOverrides": {"cpu": "lots"}}), "resourceOverrides.cpu"),
            ("cpu-negative", json!({"resourceOverrides": {"cpu": "-1"}}), "resourceOverrides.cpu"),
            ("mem-huge", json!({"resourceOverrides": {"memory": "1Ti"}}), "resourceOverrides.memory"),
            ("mem-exp", json!({"resourceOverrides": {"memory": "1e12"}}), "resourceOverrides.memory"),
            (
                "env-backend",
                json!({"environmentVariables": {"BACKEND_API_URL": "http://attacker.example"}}),
                "environmentVariables.BACKEND_API_URL",
            ),
            (
                "env-name",
                json!({"environmentVariables": {"AGENTIC_SESSION_NAME": "someone-else"}}),
                "environmentVariables.AGENTIC_SESSION_NAME",
            ),
        ];
        let mut wrong = Vec::new();
        for (name, extra, field) in &cases {
            let mut body = json!({"name": name, "prompt": "escalate"});
            for (k, v) in extra.as_object().into_iter().flatten() {
                body[k] = v.clone();
            }
            let r = self.c.post(&self.sessions_path(), &self.alice, body).await;
            if r.status != StatusCode::UNPROCESSABLE_ENTITY || r.body["field"] != *field || !r.body["error"].is_string()
            {
                wrong.push(format!("{name}: {} {}", r.status, r.body));
            }
        }
        // Nothing was created, not even later by a command that slipped through.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (name, _, _) in &cases {
            if self.session_in_cluster(name).await?.is_some() {
                wrong.push(format!("{name}: the session exists"));
            }
        }
        ensure!(wrong.is_empty(), "{}", wrong.join("; "));
        Ok(())
    }

    /// The allowed class and a bounded override reach the pod, as request and limit; a runner
    /// without overrides is admitted with the LimitRange's defaults; both complete.
    async fn bounded_overrides_reach_the_pod(&self) -> anyhow::Result<()> {
        let body = json!({"name": "bounded", "prompt": "p", "resourceOverrides": {"cpu": "0.5", "memory": "1Gi", "priorityClass": ALLOWED}});
        let r = self.c.post(&self.sessions_path(), &self.alice, body).await;
        ensure!(r.status == StatusCode::CREATED, "bounded: {} {}", r.status, r.body);
        let r = self.c.post(&self.sessions_path(), &self.alice, json!({"name": "plain", "prompt": "p"})).await;
        ensure!(r.status == StatusCode::CREATED, "plain: {} {}", r.status, r.body);

        let job = self.job("bounded").await?;
        let spec = job.spec.and_then(|s| s.template.spec).context("pod template")?;
        ensure!(
            spec.priority_class_name.as_deref() == Some(ALLOWED),
            "priorityClassName {:?}",
            spec.priority_class_name
        );
        let want = json!({"cpu": "500m", "memory": "1Gi"});
        let res = serde_json::to_value(&spec.containers[0].resources)?;
        ensure!(res["requests"] == want && res["limits"] == want, "the override is request and limit: {res}");
        let pod = self.pod("bounded").await?;
        let ps = pod.spec.context("pod spec")?;
        ensure!(
            ps.priority_class_name.as_deref() == Some(ALLOWED) && ps.priority == Some(1000),
            "pod priority {:?} {:?}",
            ps.priority_class_name,
            ps.priority
        );

        // No override: nothing in the Job, the LimitRange's defaults in the admitted pod.
        let job = self.job("plain").await?;
        let spec = job.spec.and_then(|s| s.template.spec).context("pod template")?;
        ensure!(spec.priority_class_name.is_none(), "plain: priorityClassName {:?}", spec.priority_class_name);
        let res = spec.containers[0].resources.clone().unwrap_or_default();
        ensure!(res.requests.is_none() && res.limits.is_none(), "plain: {res:?}");
        let pod = self.pod("plain").await?;
        let ps = pod.spec.context("pod spec")?;
        let res = serde_json::to_value(&ps.containers[0].resources)?;
        ensure!(
            res["requests"] == json!({"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "1Gi"})
                && res["limits"] == json!({"cpu": "1", "memory": "2Gi", "ephemeral-storage": "10Gi"}),
            "plain pod (local disk bounded too): {res}"
        );
        ensure!(ps.priority_class_name.is_none(), "plain pod: {:?}", ps.priority_class_name);
        self.phase("bounded", "Completed").await?;
        self.phase("plain", "Completed").await?;
        Ok(())
    }

    /// A signed command straight on the bus (as a compromised or older api would publish it):
    /// the reconciler refuses it with 422 and writes nothing. Same for a clone command of an
    /// out-of-bounds source.
    async fn refused_at_apply_time(&self) -> anyhow::Result<()> {
        let keys = BusKeys::shared(self.env)?;
        let signer = CommandSigner::from_pem(&std::fs::read_to_string(&keys.signing_key_file)?)?;
        let p = ProjectName::new(&self.project)?;
        // From JSON: robust to fields a principal may gain.
        let alice: Principal =
            serde_json::from_value(json!({"user": "alice", "groups": ["team-a", "system:authenticated"]}))?;
        let spec = serde_json::from_value(
            json!({"prompt": "preempt", "resourceOverrides": {"priorityClass": "system-node-critical", "cpu": "64"}}),
        )?;
        let create = Command::new(
            p.clone(),
            alice.clone(),
            CommandBody::SessionCreate(SessionCreate::new(SessionName::new("on-the-bus")?, spec)),
        );
        let (code, message) = self.publish(&signer, &create).await?;
        ensure!(code == 422 && message.contains("resourceOverrides."), "create: {code} {message}");
        ensure!(self.session_in_cluster("on-the-bus").await?.is_none(), "the session was created");

        // A clone of a session whose spec is out of bounds (written straight to the cluster).
        self.direct_session("direct-src", json!({"memory": "64Gi"})).await?;
        let clone = Command::new(
            p,
            alice,
            CommandBody::SessionClone(SessionClone {
                name: SessionName::new("direct-src")?,
                target_project: ProjectName::new(&self.project)?,
                new_session_name: SessionName::new("bus-clone")?,
            }),
        );
        let (code, message) = self.publish(&signer, &clone).await?;
        ensure!(code == 422 && message.contains("resourceOverrides.memory"), "clone: {code} {message}");
        ensure!(self.session_in_cluster("bus-clone").await?.is_none(), "the clone was created");
        Ok(())
    }

    async fn publish(&self, signer: &CommandSigner, cmd: &Command) -> anyhow::Result<(u16, String)> {
        let js = self.env.jetstream();
        let out = events::wire::encode_command(cmd, signer);
        js.publish_with_headers(out.subject, out.headers, out.payload).await?.await?;
        let subject = events::subjects::result(&cmd.project, cmd.id);
        let result = eventually("the command's result", WAIT, || {
            let (js, s) = (js.clone(), subject.clone());
            async move {
                let stream = js.get_stream(events::streams::RESULTS_STREAM).await?;
                Ok(stream
                    .direct_get_last_for_subject(s)
                    .await
                    .ok()
                    .and_then(|m| events::wire::decode_result(Some(&m.headers), &m.payload).ok()))
            }
        })
        .await?;
        match result.outcome {
            Outcome::Failed { code, message, .. } => Ok((code, message)),
            other => Err(anyhow!("applied: {other:?}")),
        }
    }

    /// Alice, the project's admin, writes a session straight to the cluster (her role lets
    /// her), bypassing the api.
    async fn direct_session(&self, name: &str, overrides: Value) -> anyhow::Result<()> {
        let spec = serde_json::from_value(json!({"prompt": "bypass", "resourceOverrides": overrides}))?;
        Api::<AgenticSession>::namespaced(self.alice_kube().await?, &self.project)
            .create(&PostParams::default(), &AgenticSession::new(name, spec))
            .await
            .context("alice creates a session straight in the cluster")?;
        Ok(())
    }

    /// The session controller checks again: phase Error naming the field, and no Job. The api
    /// refuses to clone it.
    async fn refused_before_the_job(&self) -> anyhow::Result<()> {
        self.direct_session("direct-cpu", json!({"cpu": "1000"})).await?;
        self.direct_session("direct-pc", json!({"priorityClass": "system-node-critical"})).await?;
        for (name, field) in [("direct-cpu", "resourceOverrides.cpu"), ("direct-pc", "resourceOverrides.priorityClass")]
        {
            let s = self.phase(name, "Error").await?;
            let message = s.status.and_then(|st| st.message).unwrap_or_default();
            ensure!(message.contains(field), "{name}: {message}");
            let job = Api::<Job>::namespaced(self.env.admin(), &self.project).get_opt(&format!("{name}-job")).await?;
            ensure!(job.is_none(), "{name}: a runner Job exists");
        }
        let r = self
            .c
            .post(
                &format!("{}/direct-cpu/clone", self.sessions_path()),
                &self.alice,
                json!({"targetProject": self.project, "newSessionName": "api-clone"}),
            )
            .await;
        ensure!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY && r.body["field"] == "resourceOverrides.cpu",
            "clone: {} {}",
            r.status,
            r.body
        );
        ensure!(self.session_in_cluster("api-clone").await?.is_none(), "the clone was created");
        Ok(())
    }

    /// The session sets a variable the project's runner Secret also has: in the pod's
    /// environment the Secret's reference comes after (and so overrides) the session's value.
    async fn runner_secret_wins(&self) -> anyhow::Result<()> {
        let r = self
            .c
            .put(
                &format!("/api/projects/{}/runner-secrets", self.project),
                &self.alice,
                json!({"data": {"API_TOKEN": "from-the-admin"}}),
            )
            .await;
        ensure!(r.status == StatusCode::OK, "runner secret: {} {}", r.status, r.body);
        let body = json!({"name": "envs", "prompt": "p", "environmentVariables": {"API_TOKEN": "from-the-session", "COPY": "$(API_TOKEN)", "KWOK_RUN_DURATION": "1h"}});
        let r = self.c.post(&self.sessions_path(), &self.alice, body).await;
        ensure!(r.status == StatusCode::CREATED, "{} {}", r.status, r.body);
        let job = self.job("envs").await?;
        let spec = job.spec.and_then(|s| s.template.spec).context("pod template")?;
        let c: &Container = &spec.containers[0];
        let env = c.env.clone().unwrap_or_default();
        let tokens: Vec<_> = env.iter().enumerate().filter(|(_, e)| e.name == "API_TOKEN").collect();
        // The session's value, then the integration secret's key, then the runner secret's.
        let [(i, literal), (h, from_integration), (j, from_secret)] = tokens.as_slice() else {
            bail!("API_TOKEN entries: {tokens:?}")
        };
        ensure!(i < h && h < j && literal.value.as_deref() == Some("from-the-session"), "{tokens:?}");
        let r = from_integration
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .context("the second API_TOKEN is a secretKeyRef")?;
        ensure!(
            r.name == "ambient-non-vertex-integrations" && r.key == "API_TOKEN" && r.optional == Some(true),
            "{r:?}"
        );
        let r = from_secret
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .context("the third API_TOKEN is a secretKeyRef")?;
        ensure!(r.name == "ambient-runner-secrets" && r.key == "API_TOKEN" && r.optional == Some(true), "{r:?}");
        // Nor can a session variable copy the Secret's value: `$(…)` reaches the runner verbatim.
        let copy = env.iter().find(|e| e.name == "COPY").and_then(|e| e.value.as_deref());
        ensure!(copy == Some("$$(API_TOKEN)"), "COPY is expanded by the kubelet: {copy:?}");
        // No other entry overrides it, and the rest of the Secret still comes in via envFrom.
        ensure!(env[*j + 1..].iter().all(|e| e.name != "API_TOKEN"), "{env:?}");
        let from = c.env_from.clone().unwrap_or_default();
        let sources: Vec<&str> = from.iter().filter_map(|f| f.secret_ref.as_ref()).map(|s| s.name.as_str()).collect();
        ensure!(
            sources == ["ambient-non-vertex-integrations", "ambient-runner-secrets"],
            "the runner secret is the last source: {from:?}"
        );
        // The fake runner honours the session's own variables (first of duplicates): still running.
        self.phase("envs", "Running").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(
            self.session_in_cluster("envs")
                .await?
                .and_then(|s| s.status)
                .and_then(|s| s.phase)
                .is_some_and(|p| p.as_str() == "Running"),
            "envs stopped running"
        );
        let _ = self.c.post(&format!("{}/envs/stop", self.sessions_path()), &self.alice, json!({})).await;
        Ok(())
    }
}
