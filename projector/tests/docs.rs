//! The sink examples of projector/README.md work under the shipped NetworkPolicy: each example
//! URL's port is one the projector's egress allows (a sink on another port needs an egress rule,
//! deploy/README.md says how).

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The TCP ports the `ambient-projector` NetworkPolicy allows out, to any destination.
fn projector_egress_ports() -> Vec<u16> {
    let text = std::fs::read_to_string(repo().join("deploy/base/networkpolicies.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let policy =
        docs.iter().find(|d| d["metadata"]["name"] == "ambient-projector").expect("the projector's NetworkPolicy");
    policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule.get("to").is_none())
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["port"].as_u64().and_then(|n| u16::try_from(n).ok()))
        .collect()
}

#[test]
fn readme_sink_examples_are_reachable_under_the_network_policy() {
    let allowed = projector_egress_ports();
    assert!(allowed.contains(&443) && allowed.contains(&80), "{allowed:?}");
    let readme = std::fs::read_to_string(repo().join("projector/README.md")).unwrap();
    let urls: Vec<&str> = readme.lines().filter_map(|l| l.trim().strip_prefix("url: ")).collect();
    assert!(!urls.is_empty(), "the README shows sink examples");
    for url in urls {
        let url = url.split_whitespace().next().unwrap();
        let (scheme, rest) = url.split_once("://").unwrap();
        let authority = rest.split('/').next().unwrap();
        let port = match authority.rsplit_once(':') {
            Some((_, p)) => p.parse::<u16>().unwrap(),
            None if scheme == "https" => 443,
            None => 80,
        };
        assert!(allowed.contains(&port), "{url}: port {port} is not allowed by the projector's egress {allowed:?}");
    }
}
