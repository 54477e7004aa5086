//! A client generated from the api's served OpenAPI document by a widely used generator
//! (openapi-typescript, with openapi-fetch) builds and runs one user story against the real
//! stack: project, session, watch to Completed, grant, access key (`api/tests/client/run.sh`).
//! Without node and npm the test is skipped with a notice, except under `CI=true`, where it
//! fails.

mod common;

use std::process::Command;

use ambient_tests::{DemoUser, TestEnv};
use common::{stack, token};

fn node_available() -> bool {
    ["node", "npm"].iter().all(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

#[tokio::test]
async fn a_generated_typescript_client_runs_the_user_story() {
    if !node_available() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "node and npm are needed for the generated client");
        eprintln!("SKIPPED: node and npm are not installed; the generated client's story did not run");
        return;
    }
    let env = TestEnv::shared().await.unwrap();
    let s = stack(&env, &[]).await;
    let script = ambient_tests::repo_dir().join("api/tests/client/run.sh");
    let alice = token(&env, DemoUser::Alice);
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&s.api_url)
        .arg(&alice)
        .arg(DemoUser::Bob.name())
        .output()
        .await
        .unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the generated client's story failed:\n{report}");
    assert!(report.contains("story complete"), "the story did not finish:\n{report}");
}
