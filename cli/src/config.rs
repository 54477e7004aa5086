//! Where the api is and who the caller is: flags and environment first, then the current
//! kubeconfig context's user token (what `oc login` or `kubectl` left there).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client::Failure;

/// The kubeconfig fields the token comes from.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Debug, Deserialize)]
struct Context {
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct User {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

/// The token of `kubeconfig`'s current context, if its user has one (a token or a token file).
pub fn kubeconfig_token(kubeconfig: &Path) -> Result<Option<String>, Failure> {
    let text = match std::fs::read_to_string(kubeconfig) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::Local(format!("reading {}: {e}", kubeconfig.display()))),
    };
    // The parser's message quotes the lines around the fault, which may hold a token.
    let cfg: Kubeconfig = serde_saphyr::from_str(&text)
        .map_err(|_| Failure::Local(format!("{} is not a kubeconfig this client can read", kubeconfig.display())))?;
    let Some(current) = cfg.current_context.as_deref() else { return Ok(None) };
    let Some(context) = cfg.contexts.iter().find(|c| c.name == current) else { return Ok(None) };
    let Some(name) = context.context.user.as_deref() else { return Ok(None) };
    let Some(user) = cfg.users.iter().find(|u| u.name == name) else { return Ok(None) };
    let user = &user.user;
    if let Some(t) = user.token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(t.to_string()));
    }
    match &user.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| Failure::Local(format!("reading the token file {}: {e}", f.display()))),
        None => Ok(None),
    }
}

/// Whether a token may be sent to `server`: over https, or over plain http only to this host
/// (a dev stack): a bearer token in clear text across a network is anyone's.
pub fn may_send_token(server: &str) -> bool {
    let Some(rest) = server.strip_prefix("http://") else { return server.starts_with("https://") };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| &h[1..]).unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The kubeconfig to read: the given one (the first of a `:`-separated KUBECONFIG), else
/// `~/.kube/config`.
pub fn kubeconfig_path(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(p) => p.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from).or(Some(p.to_path_buf())),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_contexts_user_token() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("t");
        std::fs::write(&token_file, "from-file\n").unwrap();
        let cfg = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: b\ncontexts:\n- name: a\n  context: {{cluster: c, user: ua}}\n- name: b\n  context: {{cluster: c, user: ub}}\nusers:\n- name: ua\n  user: {{token: token-a}}\n- name: ub\n  user: {{tokenFile: {}}}\n- name: uc\n  user: {{client-certificate: x}}\n",
            token_file.display()
        );
        let path = dir.path().join("config");
        std::fs::write(&path, &cfg).unwrap();
        assert_eq!(kubeconfig_token(&path).unwrap().as_deref(), Some("from-file"));
        std::fs::write(&path, cfg.replace("current-context: b", "current-context: a")).unwrap();
        assert_eq!(kubeconfig_token(&path).unwrap().as_deref(), Some("token-a"));
        // A context whose user has no token (a client certificate), or none at all.
        std::fs::write(&path, cfg.replace("current-context: b", "current-context: none")).unwrap();
        assert_eq!(kubeconfig_token(&path).unwrap(), None);
        assert_eq!(kubeconfig_token(&dir.path().join("missing")).unwrap(), None);
        std::fs::write(&path, "{not yaml, token: secret-value").unwrap();
        let err = kubeconfig_token(&path).unwrap_err().to_string();
        assert!(!err.contains("secret-value"), "{err}");
    }

    #[test]
    fn tokens_travel_encrypted_or_stay_on_this_host() {
        for ok in ["https://api.example.com", "http://127.0.0.1:8080", "http://localhost:1/x", "http://[::1]:80"] {
            assert!(may_send_token(ok), "{ok}");
        }
        for bad in ["http://api.example.com", "http://10.0.0.1:8080", "ftp://x", "http://127.0.0.1.evil.com/"] {
            assert!(!may_send_token(bad), "{bad}");
        }
    }

    #[test]
    fn the_first_of_several_kubeconfigs() {
        assert_eq!(kubeconfig_path(Some(Path::new("/a/b:/c/d"))), Some(PathBuf::from("/a/b")));
        assert_eq!(kubeconfig_path(Some(Path::new("/a/b"))), Some(PathBuf::from("/a/b")));
    }
}
