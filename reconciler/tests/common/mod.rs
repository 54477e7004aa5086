//! Shared harness of the reconciler's tests: the reconciler binary running under its deploy/
//! ServiceAccount, and signed commands published to the real JetStream.
#![allow(dead_code)]

use std::time::Duration;

use ambient_tests::components::{BusKeys, Component, ServiceProcess};
use ambient_tests::{DemoUser, TestEnv, eventually};
use events::commands::CommandBody;
use events::results::{CommandResult, Outcome};
use events::signing::CommandSigner;
use events::streams::RESULTS_STREAM;
use events::{Command, Principal, ProjectName, subjects};

pub struct Harness {
    pub env: TestEnv,
    pub keys: BusKeys,
    pub signer: CommandSigner,
    pub reconciler: ServiceProcess,
}

pub fn principal(user: DemoUser) -> Principal {
    let mut groups: Vec<String> = user.groups().iter().map(|g| g.to_string()).collect();
    groups.push("system:authenticated".into());
    Principal { user: user.name().into(), groups, ..Default::default() }
}

impl Harness {
    pub async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::shared().await?;
        // Every reconciler on this bus must trust the same api key: they are replicas.
        let keys = BusKeys::shared(&env)?;
        let signer = CommandSigner::from_pem(&std::fs::read_to_string(&keys.signing_key_file)?)?;
        let kubeconfig = Component::Reconciler.kubeconfig(&env).await?;
        let (nats, verify, sealing) =
            (env.nats_url().to_string(), keys.verify_keys_file.clone(), keys.sealing_key_file.clone());
        let reconciler = ServiceProcess::start(Component::Reconciler, |health| {
            vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--nats-url={nats}"),
                format!("--health-addr={health}"),
                format!("--command-verify-keys-file={}", verify.display()),
                format!("--sealing-key-file={}", sealing.display()),
                "--log-format=text".into(),
                "--runner-image=example.invalid/runner:test".into(),
            ]
        })
        .await?;
        Ok(Harness { env, keys, signer, reconciler })
    }

    pub fn command(&self, project: &ProjectName, who: DemoUser, body: CommandBody) -> Command {
        Command::new(project.clone(), principal(who), body)
    }

    /// Publishes a signed command (the msg id is the command id).
    pub async fn publish(&self, cmd: &Command) -> anyhow::Result<()> {
        let out = events::wire::encode_command(cmd, &self.signer);
        self.env.jetstream().publish_with_headers(out.subject, out.headers, out.payload).await?.await?;
        Ok(())
    }

    /// Publishes again with a fresh `Nats-Msg-Id`: what a replay after the dedup window looks like.
    pub async fn republish_new_msg_id(&self, cmd: &Command) -> anyhow::Result<()> {
        let mut out = events::wire::encode_command(cmd, &self.signer);
        out.headers.insert("Nats-Msg-Id", format!("replay-{}", uuid::Uuid::new_v4()).as_str());
        self.env.jetstream().publish_with_headers(out.subject, out.headers, out.payload).await?.await?;
        Ok(())
    }

    pub async fn result(&self, cmd: &Command) -> anyhow::Result<CommandResult> {
        let js = self.env.jetstream().clone();
        let subject = subjects::result(&cmd.project, cmd.id);
        eventually(&format!("result of {}", cmd.body.command_type().type_str()), Duration::from_secs(120), || {
            let (js, subject) = (js.clone(), subject.clone());
            async move {
                let stream = js.get_stream(RESULTS_STREAM).await?;
                match stream.direct_get_last_for_subject(subject).await {
                    Ok(m) => Ok(Some(events::wire::decode_result(Some(&m.headers), &m.payload)?)),
                    Err(_) => Ok(None),
                }
            }
        })
        .await
    }

    /// Publishes and waits for the result.
    pub async fn run(&self, project: &ProjectName, who: DemoUser, body: CommandBody) -> anyhow::Result<CommandResult> {
        let cmd = self.command(project, who, body);
        self.publish(&cmd).await?;
        self.result(&cmd).await
    }

    /// Like [`Harness::run`], asserting success.
    pub async fn ok(&self, project: &ProjectName, who: DemoUser, body: CommandBody) -> anyhow::Result<CommandResult> {
        let ty = body.command_type().type_str();
        let r = self.run(project, who, body).await?;
        anyhow::ensure!(
            matches!(r.outcome, Outcome::Succeeded { .. }),
            "{ty} failed: {:?}\nlog:\n{}",
            r.outcome,
            tail(&self.reconciler.log())
        );
        Ok(r)
    }

    /// A fresh project created by `who` through the reconciler.
    pub async fn project(&self, prefix: &str, who: DemoUser) -> anyhow::Result<ProjectName> {
        let p = ProjectName::new(ambient_tests::unique_name(prefix))?;
        self.ok(
            &p,
            who,
            CommandBody::ProjectCreate(events::commands::ProjectCreate {
                display_name: Some("Test".into()),
                description: None,
            }),
        )
        .await?;
        Ok(p)
    }
}

pub fn code(r: &CommandResult) -> u16 {
    match &r.outcome {
        Outcome::Succeeded { .. } => 200,
        Outcome::Failed { code, .. } => *code,
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
