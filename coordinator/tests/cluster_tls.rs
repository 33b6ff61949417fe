//! The cluster over mutual TLS: a CA made here (rcgen), an in-process coordinator serving with its
//! certificate and requiring client certificates, and two `ibench worker` processes with theirs.
//! The worker registers over TLS and a pipeline generates the single-process engine's tokens
//! through it; clients without TLS, without a client certificate or with a certificate of another
//! CA are refused, and a worker told an https:// URL without a CA says what to give.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ibench_coordinator::cluster::{serve, ClusterOptions, Pipeline, WorkerRegistry};
use ibench_proto::tls::TlsFiles;
use ibench_proto::v1 as pb;
use ibench_proto::ClusterToken;
use ibench_shared::placement::PlacementOptions;
use ibench_shared::{GenerationParams, Quantization};
use ibench_worker::{Engine, GenerateRequest, LoadOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

const TOKEN: &str = "test-tls-secret";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A certificate for `localhost` signed by `ca`, written as `<name>.pem` and `<name>.key`.
fn leaf(ca: &Ca, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn register_request() -> pb::RegisterRequest {
    pb::RegisterRequest {
        api_version: ibench_proto::API_VERSION,
        name: "probe".into(),
        address: "https://127.0.0.1:1".into(),
        devices: vec![],
        version: "test".into(),
    }
}

/// Whether a client with `tls` can register at `url` (a TLS refusal shows up as an RPC error).
async fn can_register(url: &str, tls: Option<ClientTlsConfig>) -> bool {
    let Ok(ep) = ibench_proto::endpoint(url, tls.as_ref()) else {
        return false;
    };
    let Ok(channel) = ep.connect().await else {
        return false;
    };
    let mut c = ibench_proto::coordinator_client(channel, ClusterToken::new(TOKEN).unwrap());
    c.register(register_request()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_generates_and_refuses_who_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_ca = ca("ibench test CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, cluster_ca.cert.pem()).unwrap();
    let (coord_cert, coord_key) = leaf(&cluster_ca, dir.path(), "coordinator");
    let (worker_cert, worker_key) = leaf(&cluster_ca, dir.path(), "worker");

    let tls = TlsFiles {
        cert: Some(coord_cert.clone()),
        key: Some(coord_key.clone()),
        ca: Some(ca_path.clone()),
        domain: Some("localhost".into()),
    }
    .load()
    .unwrap();
    let registry = Arc::new(
        WorkerRegistry::new(ClusterToken::new(TOKEN).unwrap(), Duration::from_secs(2))
            .with_tls(tls.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        registry.clone(),
        None,
        std::future::pending(),
    ));

    let s = |p: &Path| p.display().to_string();
    // Two workers, so the activations also cross a worker-to-worker TLS hop.
    let _workers: Vec<_> = ["tls-w0", "tls-w1"]
        .iter()
        .map(|name| {
            common::spawn_worker(
                &url,
                name,
                TOKEN,
                &dir.path().join("registry.toml"),
                &[
                    "--tls-cert",
                    &s(&worker_cert),
                    "--tls-key",
                    &s(&worker_key),
                    "--tls-ca",
                    &s(&ca_path),
                    "--tls-domain",
                    "localhost",
                ],
            )
        })
        .collect();
    registry
        .wait_for_workers(2, Duration::from_secs(120))
        .await
        .unwrap();
    for w in registry.workers() {
        assert!(w.address.starts_with("https://"), "{}", w.address);
    }

    // Tokens through the TLS hops equal the engine's.
    let opts = ClusterOptions {
        min_stages: 2,
        kv_tokens: 64,
        placement: PlacementOptions { reserve_bytes: 0 },
        rpc_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let mut p = Pipeline::load(
        "tiny-qwen3",
        &fixture("tiny-qwen3"),
        Quantization::None,
        registry.clone(),
        opts,
    )
    .await
    .unwrap();
    assert_eq!(p.stages().len(), 2);
    let reqs = vec![GenerateRequest {
        prompt_ids: vec![1, 2, 3, 4, 5],
        params: GenerationParams {
            max_new_tokens: 8,
            ..Default::default()
        },
    }];
    let got = p.generate(&reqs).await.unwrap();
    let want = Engine::load(&fixture("tiny-qwen3"), &LoadOptions::default())
        .unwrap()
        .generate(&reqs)
        .unwrap();
    assert_eq!(got, want);

    // Who gets in: the cluster CA with a client certificate, nobody else.
    let read = |p: &Path| std::fs::read(p).unwrap();
    let with_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca_path)))
        .identity(Identity::from_pem(read(&worker_cert), read(&worker_key)))
        .domain_name("localhost");
    assert!(can_register(&url, Some(with_cert)).await);
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca_path)))
        .domain_name("localhost");
    assert!(
        !can_register(&url, Some(no_cert)).await,
        "a client without a certificate got in"
    );
    let other_ca = ca("another CA");
    let (bad_cert, bad_key) = leaf(&other_ca, dir.path(), "intruder");
    let foreign = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca_path)))
        .identity(Identity::from_pem(read(&bad_cert), read(&bad_key)))
        .domain_name("localhost");
    assert!(
        !can_register(&url, Some(foreign)).await,
        "a certificate of another CA got in"
    );
    let plain = url.replacen("https://", "http://", 1);
    assert!(
        !can_register(&plain, None).await,
        "plain HTTP/2 got into a TLS coordinator"
    );

    // A worker given an https:// URL but no CA stops and says what to give.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ibench"))
        .args(["worker", "--coordinator", &url, "--listen", "127.0.0.1:0"])
        .env("IBENCH_CLUSTER_TOKEN", TOKEN)
        .env("IBENCH_REGISTRY", dir.path().join("registry.toml"))
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-ca"), "{stderr}");

    // A certificate without its key is a flag error before anything starts.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ibench"))
        .args([
            "worker",
            "--coordinator",
            &url,
            "--tls-cert",
            &s(&worker_cert),
        ])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
    p.unload().await;
}
