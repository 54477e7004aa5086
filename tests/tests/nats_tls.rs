//! The bus over TLS: a NATS server that requires TLS and verifies client certificates, and the
//! flags every component takes for it (`--nats-ca-file`, `--nats-tls-cert`, `--nats-tls-key`).
//! A client with the CA and its certificate connects; one without either, or trusting another
//! CA, does not; a real service (the projector) starts on it and bootstraps its streams.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::Duration;

use ambient_tests::TestEnv;
use ambient_tests::components::{Component, ServiceProcess, free_port, nats_server_bin, wait_for};
use anyhow::{Context as _, ensure};
use events::bus::BusArgs;

/// Runs `openssl <args>` (split at spaces) in `dir`.
fn openssl(dir: &Path, args: &str) -> anyhow::Result<()> {
    let out = StdCommand::new("openssl").args(args.split(' ')).current_dir(dir).output().context("running openssl")?;
    ensure!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A CA, and a certificate it signed for `name` (server: for 127.0.0.1; client: for clients).
fn pki(dir: &Path, ca: &str, name: &str, server: bool) -> anyhow::Result<()> {
    if !dir.join(format!("{ca}.pem")).exists() {
        openssl(
            dir,
            &format!("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={ca} -keyout {ca}-key.pem -out {ca}.pem"),
        )?;
    }
    let ext = if server {
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(dir, &format!("req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}-key.pem -out {name}.csr"))?;
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}-key.pem -CAcreateserial -days 2 -extfile {name}.ext -out {name}.pem"
        ),
    )
}

fn bus(url: &str, ca: Option<PathBuf>, client: Option<(PathBuf, PathBuf)>) -> BusArgs {
    BusArgs {
        nats_url: url.into(),
        nats_user: None,
        nats_password: None,
        nats_creds_file: None,
        nats_ca_file: ca,
        nats_tls_cert: client.as_ref().map(|c| c.0.clone()),
        nats_tls_key: client.map(|c| c.1),
        command_partitions: events::streams::BusConfig::default().partitions,
        stream_replicas: 1,
    }
}

/// Whether a client with `args` gets a working connection (a round trip to the server).
async fn connects(args: &BusArgs) -> bool {
    let Ok(options) = args.connect_options("tls-test") else { return false };
    match tokio::time::timeout(Duration::from_secs(10), options.connect(args.nats_url.as_str())).await {
        Ok(Ok(client)) => client.flush().await.is_ok(),
        _ => false,
    }
}

#[tokio::test]
async fn components_reach_a_bus_that_requires_tls_and_client_certificates() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    pki(d, "ca", "server", true)?;
    pki(d, "ca", "client", false)?;
    pki(d, "other-ca", "stranger", false)?;

    let port = free_port()?;
    std::fs::write(
        d.join("nats.conf"),
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\ntls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}\n",
            d.join("js"),
            d.join("server.pem"),
            d.join("server-key.pem"),
            d.join("ca.pem"),
        ),
    )?;
    let log = std::fs::File::create(d.join("nats.log"))?;
    let _nats = tokio::process::Command::new(nats_server_bin())
        .arg("-c")
        .arg(d.join("nats.conf"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawning nats-server")?;
    wait_for("TLS nats-server", Duration::from_secs(30), || async move {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok())
    })
    .await?;
    let url = format!("nats://127.0.0.1:{port}");
    let (ca, client) = (d.join("ca.pem"), (d.join("client.pem"), d.join("client-key.pem")));

    assert!(connects(&bus(&url, Some(ca.clone()), Some(client.clone()))).await, "CA and client certificate");
    assert!(!connects(&bus(&url, None, None)).await, "no TLS at all");
    assert!(!connects(&bus(&url, Some(ca.clone()), None)).await, "no client certificate");
    let stranger = (d.join("stranger.pem"), d.join("stranger-key.pem"));
    assert!(!connects(&bus(&url, Some(ca.clone()), Some(stranger))).await, "a client certificate of another CA");
    assert!(!connects(&bus(&url, Some(d.join("other-ca.pem")), Some(client.clone()))).await, "trusting another CA");
    // A file that is not there is refused at start, not at the first connection.
    let missing = bus(&url, Some(d.join("missing.pem")), None);
    let err = missing.connect_options("tls-test").err().context("a missing CA file was accepted")?;
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // A service with the flags bootstraps its streams over TLS and becomes ready.
    let kubeconfig = Component::Projector.kubeconfig(&env).await?;
    let lease = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let args = move |health: std::net::SocketAddr| {
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--nats-url={url}"),
            format!("--nats-ca-file={}", ca.display()),
            format!("--nats-tls-cert={}", client.0.display()),
            format!("--nats-tls-key={}", client.1.display()),
            format!("--health-addr={health}"),
            format!("--lease-name={lease}"),
            // Owns no project of the shared cluster.
            "--project-selector=ambient-tls-test=none".into(),
        ]
    };
    let projector = ServiceProcess::start(Component::Projector, args).await?;
    let ready = format!("http://{}/readyz", projector.health_addr());
    wait_for("projector ready over TLS", Duration::from_secs(60), || {
        let ready = ready.clone();
        async move { Ok(reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success())) }
    })
    .await
    .with_context(|| format!("projector log:\n{}", projector.log()))?;
    Ok(())
}
