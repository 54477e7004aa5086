//! The `ambient` command against the real stack (api, reconciler, projector on the dev cluster
//! and NATS): the story a new user runs, every resource's verbs, bad input and its exit codes,
//! the token from a kubeconfig, and a watch that outlives a restart of the api.

use std::process::{Output, Stdio};
use std::time::Duration;

use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv, unique_name};
use tokio::io::{AsyncBufReadExt as _, BufReader};

struct Cli {
    server: String,
    token: String,
}

impl Cli {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ambient"));
        c.args(args)
            .env("AMBIENT_API_URL", &self.server)
            .env("AMBIENT_TOKEN", &self.token)
            .env_remove("AMBIENT_PROJECT")
            .env("KUBECONFIG", "/nonexistent")
            .stdin(Stdio::null());
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.expect("ambient runs")
    }

    /// Runs `args`, expecting exit code `code`; its stdout.
    async fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "ambient {args:?}\nstdout: {stdout}\nstderr: {stderr}");
        stdout.into_owned()
    }

    /// Runs `args`, expecting failure `code` with one clear line on stderr containing `says`.
    async fn refused(&self, code: i32, args: &[&str], says: &str) {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "ambient {args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(says), "ambient {args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_at_the_terminal() {
    let env = TestEnv::shared().await.unwrap();
    let mut stack = Stack::start(&env, StackOptions::default()).await.unwrap();
    let alice = Cli { server: stack.api_url.clone(), token: env.token(DemoUser::Alice).unwrap().to_string() };
    let p = unique_name("cli");

    // Who am I; a project; a session run to its end from a spec file, with its progress.
    let me: serde_json::Value = serde_json::from_str(&alice.expect(0, &["whoami"]).await).unwrap();
    assert_eq!(me["username"].as_str().or(me["user"].as_str()), Some("alice"), "{me}");
    alice.expect(0, &["projects", "create", &p, "--display-name", "CLI demo"]).await;
    assert!(alice.expect(0, &["projects", "list", "-o", "name"]).await.lines().any(|l| l == format!("project/{p}")));
    let got: serde_json::Value =
        serde_json::from_str(&alice.expect(0, &["projects", "get", &p, "-o", "json"]).await).unwrap();
    assert_eq!(got["displayName"], "CLI demo");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("hello.yaml");
    std::fs::write(&spec, "name: hello\nprompt: Say hello\ndisplayName: Hello\n").unwrap();
    let out =
        alice.run(&["sessions", "create", "-p", &p, "-f", spec.to_str().unwrap(), "--wait", "--until-done"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("hello: Completed"), "progress lines: {stderr}");
    let table = alice.expect(0, &["sessions", "list", "-p", &p]).await;
    let row = table.lines().find(|l| l.starts_with("hello ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("Completed"), "{table}");
    let yaml = alice.expect(0, &["sessions", "get", "-p", &p, "hello", "-o", "yaml"]).await;
    assert!(yaml.contains("phase: Completed"), "{yaml}");

    // Grants and keys; a key's token works as a token of its own, until it is revoked.
    alice.expect(0, &["permissions", "add", "-p", &p, "bob", "--role", "view"]).await;
    let perms = alice.expect(0, &["permissions", "list", "-p", &p]).await;
    assert!(perms.lines().any(|l| l.contains("bob") && l.contains("view")), "{perms}");
    let token = alice.expect(0, &["keys", "create", "-p", &p, "ci-key", "--role", "view"]).await.trim().to_string();
    assert!(token.len() > 20, "a token: {token}");
    let keys: serde_json::Value =
        serde_json::from_str(&alice.expect(0, &["keys", "list", "-p", &p, "-o", "json"]).await).unwrap();
    assert!(!keys.to_string().contains(&token), "a listed key never shows its token");
    let key_id = keys["items"][0]["id"].as_str().unwrap().to_string();
    let robot = Cli { server: alice.server.clone(), token: token.clone() };
    assert!(robot.expect(0, &["sessions", "list", "-p", &p, "-o", "name"]).await.contains("session/hello"));
    robot.refused(4, &["sessions", "create", "-p", &p, "--prompt", "x"], "HTTP 403").await;
    alice.expect(0, &["keys", "delete", "-p", &p, &key_id]).await;
    alice.expect(0, &["permissions", "remove", "-p", &p, "bob"]).await;

    // Secrets: keys are listed, values never printed; a value comes from a file or stdin.
    let value_file = dir.path().join("value");
    std::fs::write(&value_file, "sk-from-a-file\n").unwrap();
    let from_file = value_file.to_str().unwrap();
    alice.expect(0, &["secrets", "set", "-p", &p, "ANTHROPIC_API_KEY", "--from-file", from_file]).await;
    let mut piped = alice.command(&["secrets", "set", "-p", &p, "GITHUB_TOKEN"]);
    let mut child = piped.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().unwrap(), b"ghp-from-stdin\n").await.unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = alice.expect(0, &["secrets", "list", "-p", &p]).await;
    assert!(listed.contains("ANTHROPIC_API_KEY") && listed.contains("GITHUB_TOKEN"), "{listed}");
    let json = alice.expect(0, &["secrets", "list", "-p", &p, "-o", "json"]).await;
    assert!(!json.contains("sk-from-a-file") && !json.contains("ghp-from-stdin"), "values never shown: {json}");
    alice.expect(0, &["secrets", "unset", "-p", &p, "GITHUB_TOKEN"]).await;
    let listed = alice.expect(0, &["secrets", "list", "-p", &p, "-o", "name"]).await;
    assert_eq!(listed.trim(), "secret-key/ANTHROPIC_API_KEY", "{listed}");
    alice.refused(1, &["secrets", "set", "-p", &p, "EMPTY", "--from-file", "/dev/null"], "is empty").await;
    alice.expect(0, &["secrets", "set", "-p", &p, "INTEGRATION_KEY", "--integration", "--from-file", from_file]).await;
    assert!(alice.expect(0, &["secrets", "list", "-p", &p, "--integration"]).await.contains("INTEGRATION_KEY"));
    assert!(alice.expect(0, &["secrets", "config", "-p", &p]).await.contains("secretName"));

    // Bad input: one clear line, the api's reason, an exit code a script can test.
    alice.refused(5, &["projects", "create", "Not A Valid Name"], "HTTP 4").await;
    alice.refused(3, &["sessions", "get", "-p", &p, "nope"], "HTTP 404").await;
    alice.refused(5, &["sessions", "create", "-p", &p, "--name", "hello", "--prompt", "again"], "HTTP 409").await;
    std::fs::write(&spec, "- not a spec\n").unwrap();
    alice.refused(1, &["sessions", "create", "-p", &p, "-f", spec.to_str().unwrap()], "session spec").await;
    let stranger = Cli { server: alice.server.clone(), token: "not-a-token".into() };
    stranger.refused(4, &["whoami"], "HTTP 401").await;
    let nowhere = Cli { server: "http://127.0.0.1:9".into(), token: "t".into() };
    nowhere.refused(7, &["whoami"], "did not answer").await;
    assert_eq!(alice.run(&["sessions", "list"]).await.status.code(), Some(2), "usage: no project");

    // The token of the current kubeconfig context (what `oc login` leaves).
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:1'}}}}]\ncontexts: [{{name: dev, context: {{cluster: c, user: alice}}}}]\nusers: [{{name: alice, user: {{token: '{}'}}}}]\n",
            alice.token
        ),
    )
    .unwrap();
    let out =
        alice.command(&["whoami"]).env_remove("AMBIENT_TOKEN").env("KUBECONFIG", &kubeconfig).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // A live watch that outlives the api going away.
    let mut watch = alice
        .command(&["sessions", "watch", "-p", &p, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let seen = |name: &'static str| {
        move |l: &str| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["name"] == name && v["type"] == "ambient.session.changed.v1"
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    alice
        .expect(0, &["sessions", "create", "-p", &p, "--name", "one", "--prompt", "x", "-l", "jira-issue=ABC-1"])
        .await;
    let first = wait_line(&mut lines, seen("one")).await;
    assert_eq!(first["data"]["labels"]["jira-issue"], "ABC-1", "the label is in the status event: {first}");
    stack.api.kill9().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.api.restart().await.unwrap();
    alice.expect(0, &["sessions", "create", "-p", &p, "--name", "two", "--prompt", "x"]).await;
    wait_line(&mut lines, seen("two")).await;
    drop(watch);

    let completion = alice.expect(0, &["completion", "bash"]).await;
    assert!(completion.contains("ambient"), "a completion script");
    alice.expect(0, &["projects", "delete", &p]).await;
}

async fn wait_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    want: impl Fn(&str) -> bool,
) -> serde_json::Value {
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if want(&l) {
                return Some(l);
            }
        }
        None
    })
    .await;
    let line = found.ok().flatten().expect("the watch showed the event");
    serde_json::from_str(&line).unwrap_or_default()
}
