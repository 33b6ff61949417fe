//! The shared token: without it (or with a wrong one) a client can neither register a worker with
//! the coordinator nor drive a worker; health checks stay open; the token is never logged.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ibench_coordinator::cluster::{serve, WorkerRegistry};
use ibench_proto::v1 as pb;
use ibench_proto::ClusterToken;
use ibench_worker::server::{StageServer, WorkerConfig};
use ibench_worker::DeviceSpec;
use tonic::Code;

const TOKEN: &str = "auth-test-secret";

async fn coordinator() -> (Arc<WorkerRegistry>, String) {
    let registry = Arc::new(WorkerRegistry::new(
        ClusterToken::new(TOKEN).unwrap(),
        Duration::from_secs(2),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        registry.clone(),
        None,
        std::future::pending(),
    ));
    (registry, url)
}

async fn channel(url: &str) -> tonic::transport::Channel {
    // The server task is already listening (bound before it was spawned): connect succeeds.
    ibench_proto::endpoint(url, None)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn register_request() -> pb::RegisterRequest {
    pb::RegisterRequest {
        api_version: ibench_proto::API_VERSION,
        name: "intruder".into(),
        address: "http://127.0.0.1:9".into(),
        devices: vec![],
        version: "0".into(),
    }
}

#[tokio::test]
async fn the_coordinator_refuses_workers_without_the_token() {
    let (registry, url) = coordinator().await;
    let ch = channel(&url).await;
    for token in [None, ClusterToken::new("wrong").unwrap()] {
        let mut c = ibench_proto::coordinator_client(ch.clone(), token);
        let e = c.register(register_request()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = c
            .heartbeat(pb::HeartbeatRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert!(registry.workers().is_empty());
    let mut ok = ibench_proto::coordinator_client(ch.clone(), ClusterToken::new(TOKEN).unwrap());
    ok.register(register_request()).await.unwrap();
    assert_eq!(registry.workers().len(), 1);
    // Health is open, for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.get_ref().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_worker_cannot_be_driven_without_the_token() {
    let server = StageServer::new(WorkerConfig {
        devices: vec![DeviceSpec::Cpu],
        token: ClusterToken::new(TOKEN).unwrap(),
        registry: None,
        memory_limit: None,
        tls: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ibench_worker::server::serve(
        listener,
        server.clone(),
        std::future::pending(),
    ));
    let ch = channel(&url).await;
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen3");
    let load = pb::LoadStageRequest {
        stage_id: "s".into(),
        model: Some(pb::load_stage_request::Model::Path(
            fixture.display().to_string(),
        )),
        layer_start: 0,
        layer_end: 3,
        device: "cpu".into(),
        ..Default::default()
    };
    for token in [None, ClusterToken::new("wrong").unwrap()] {
        let mut c = ibench_proto::stage_worker_client(ch.clone(), token);
        assert_eq!(
            c.load_stage(load.clone()).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            c.status(pb::StatusRequest {}).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        let fwd = pb::ForwardRequest {
            stage_id: "s".into(),
            ..Default::default()
        };
        assert_eq!(
            c.forward(fwd).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    assert!(server.stage_ids().is_empty(), "nothing was loaded");
    let mut ok = ibench_proto::stage_worker_client(ch, ClusterToken::new(TOKEN).unwrap());
    ok.load_stage(load).await.unwrap();
    assert_eq!(server.stage_ids(), vec!["s".to_string()]);
}

#[tokio::test]
async fn a_worker_with_a_wrong_token_exits_and_never_logs_a_token() {
    let (registry, url) = coordinator().await;
    let wrong = "wrong-secret-4711";
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ibench"))
        .args([
            "worker",
            "--coordinator",
            &url,
            "--devices",
            "cpu",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "debug",
        ])
        .env("IBENCH_CLUSTER_TOKEN", wrong)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the worker gives up")
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("wrong cluster token"), "{text}");
    assert!(
        !text.contains(wrong) && !text.contains(TOKEN),
        "a token was logged: {text}"
    );
    assert!(registry.workers().is_empty());
}
