//! Helpers of the api's end-to-end tests: a stack (api, reconciler, projector as real processes
//! under their deploy/ ServiceAccounts) and a small JSON client.
#![allow(dead_code)]

use std::time::Duration;

use ambient_tests::stack::{Stack, StackOptions};
use ambient_tests::{DemoUser, TestEnv};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;

pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self { base: base.to_string(), http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap() }
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>, headers: &[(&str, &str)]) -> Resp {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Resp { status, body, headers }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(token), Some(body), &[]).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(token), Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call(Method::DELETE, path, Some(token), None, &[]).await
    }
}

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
