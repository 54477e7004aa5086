//! Helpers of the api's end-to-end tests: a stack (api, reconciler, projector as real processes
//! under their deploy/ ServiceAccounts) and a small JSON client.
#![allow(dead_code)]

use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv};
use reqwest::StatusCode;

#[allow(unused_imports)]
pub use ambient_tests::http::{Client, Resp, read_events};

pub async fn stack(env: &TestEnv, api_args: &[&str]) -> Stack {
    let opts = StackOptions { api_args: api_args.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    Stack::start(env, opts).await.expect("stack starts")
}

pub fn token(env: &TestEnv, u: DemoUser) -> String {
    env.token(u).unwrap().to_string()
}

/// Creates a project as `who` through the api and returns its name.
pub async fn project(c: &Client, who: &str, prefix: &str) -> String {
    let name = ambient_tests::unique_name(prefix);
    let r = c.post("/api/projects", who, serde_json::json!({"name": name, "displayName": "Test project"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    name
}
