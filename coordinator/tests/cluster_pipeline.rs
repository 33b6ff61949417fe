//! The cluster end to end: an in-process coordinator on 127.0.0.1:0 and three `ibench worker`
//! processes (CPU). tiny-qwen3 split into three stages must give exactly the tokens of the
//! single-process engine and of transformers (golden.json), also after a worker is killed mid-run.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ibench_coordinator::cluster::{serve, ClusterOptions, Pipeline, WorkerRegistry};
use ibench_proto::ClusterToken;
use ibench_shared::placement::PlacementOptions;
use ibench_shared::{GenerationParams, Quantization};
use ibench_worker::{Engine, GenerateRequest, LoadOptions};
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::Mutex;

const TOKEN: &str = "test-cluster-secret";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn golden_requests(name: &str, max_new_tokens: usize) -> (Vec<GenerateRequest>, Vec<Vec<u32>>) {
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("golden.json")).unwrap())
            .unwrap();
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<u32>>()
    };
    let prompts = g["prompts"].as_array().unwrap();
    let reqs = prompts
        .iter()
        .map(|p| GenerateRequest {
            prompt_ids: ids(&p["ids"]),
            params: GenerationParams {
                max_new_tokens,
                ..Default::default()
            },
        })
        .collect();
    (reqs, prompts.iter().map(|p| ids(&p["greedy"])).collect())
}

struct Cluster {
    registry: Arc<WorkerRegistry>,
    workers: Vec<(String, Child)>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn cluster(n: usize) -> Cluster {
    // Heartbeats are slow enough that a busy CI machine never expires a live worker; a killed
    // one is found by the failed step, not by missed heartbeats.
    let token = ClusterToken::new(TOKEN).unwrap();
    let registry = Arc::new(WorkerRegistry::new(token, Duration::from_secs(2)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, registry.clone(), None, async {
        let _ = stopped.await;
    }));
    let dir = tempfile::tempdir().unwrap();
    let mut workers = Vec::new();
    for i in 0..n {
        let name = format!("w{i}");
        let child =
            common::spawn_worker(&url, &name, TOKEN, &dir.path().join("registry.toml"), &[]);
        workers.push((name, child));
    }
    registry
        .wait_for_workers(n, Duration::from_secs(120))
        .await
        .unwrap();
    Cluster {
        registry,
        workers,
        _dir: dir,
        _stop: stop,
    }
}

fn options() -> ClusterOptions {
    ClusterOptions {
        min_stages: 3,
        kv_tokens: 64,
        placement: PlacementOptions { reserve_bytes: 0 },
        rpc_timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

fn engine_outputs(reqs: &[GenerateRequest]) -> Vec<ibench_worker::GenerateOutput> {
    Engine::load(&fixture("tiny-qwen3"), &LoadOptions::default())
        .unwrap()
        .generate(reqs)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_give_the_tokens_of_one_engine() {
    let c = cluster(3).await;
    let mut p = Pipeline::load(
        "tiny-qwen3",
        &fixture("tiny-qwen3"),
        Quantization::None,
        c.registry.clone(),
        options(),
    )
    .await
    .unwrap();
    let layers: Vec<_> = p.stages().iter().map(|s| s.layers.clone()).collect();
    assert_eq!(layers, vec![0..1, 1..2, 2..3]);
    let mut workers: Vec<_> = p.stages().iter().map(|s| s.worker.clone()).collect();
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), 3, "one stage per worker: {:?}", p.stages());

    let (mut reqs, golden) = golden_requests("tiny-qwen3", 24);
    let got = p.generate(&reqs).await.unwrap();
    for (o, want) in got.iter().zip(&golden) {
        assert_eq!(&o.token_ids, want, "greedy tokens differ from transformers");
    }
    // A sampled request goes through the logits path (the others through argmax).
    reqs.push(GenerateRequest {
        prompt_ids: reqs[0].prompt_ids.clone(),
        params: GenerationParams {
            temperature: 0.8,
            top_p: 0.9,
            top_k: 50,
            seed: 42,
            max_new_tokens: 12,
            ..Default::default()
        },
    });
    let got = p.generate(&reqs).await.unwrap();
    assert_eq!(
        got,
        engine_outputs(&reqs),
        "the pipeline differs from the in-process engine"
    );
    p.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_its_sequences_replayed() {
    let mut c = cluster(3).await;
    let mut p = Pipeline::load(
        "tiny-qwen3",
        &fixture("tiny-qwen3"),
        Quantization::None,
        c.registry.clone(),
        options(),
    )
    .await
    .unwrap();
    // Kill the worker of the middle stage after the fourth step (prefill plus three decodes).
    let victim_id = p.stages()[1].worker.clone();
    let victim_name = victim_id.split('#').next().unwrap().to_string();
    let at = c
        .workers
        .iter()
        .position(|(n, _)| *n == victim_name)
        .unwrap();
    let victim = Arc::new(Mutex::new(Some(c.workers.remove(at).1)));
    let hook_victim = victim.clone();
    p.set_step_hook(Arc::new(move |step| {
        let v = hook_victim.clone();
        Box::pin(async move {
            if step == 4 {
                if let Some(mut child) = v.lock().await.take() {
                    child.kill().await.unwrap();
                }
            }
        })
    }));
    let (reqs, golden) = golden_requests("tiny-qwen3", 24);
    let got = tokio::time::timeout(Duration::from_secs(120), p.generate(&reqs))
        .await
        .expect("generation finishes")
        .unwrap();
    assert!(victim.lock().await.is_none(), "the hook ran");
    assert_eq!(p.recoveries(), 1);
    for (o, want) in got.iter().zip(&golden) {
        assert_eq!(
            &o.token_ids, want,
            "tokens after the failover differ from transformers"
        );
    }
    assert_eq!(got, engine_outputs(&reqs));
    assert!(
        p.stages().iter().all(|s| s.worker != victim_id),
        "{:?}",
        p.stages()
    );
    let mut at = 0;
    for s in p.stages() {
        assert_eq!(s.layers.start, at);
        at = s.layers.end;
    }
    assert_eq!(at, 3);
    assert!(
        c.registry.get(&victim_id).is_none(),
        "the dead worker left the registry"
    );

    // Then the worker of the first stage (the one the coordinator talks to) dies mid-run: the
    // last worker ends up with every stage.
    let first_id = p.stages()[0].worker.clone();
    let first_name = first_id.split('#').next().unwrap().to_string();
    let at = c
        .workers
        .iter()
        .position(|(n, _)| *n == first_name)
        .unwrap();
    let victim = Arc::new(Mutex::new(Some(c.workers.remove(at).1)));
    let hook_victim = victim.clone();
    let kill_at = p.steps() + 3;
    p.set_step_hook(Arc::new(move |step| {
        let v = hook_victim.clone();
        Box::pin(async move {
            if step == kill_at {
                if let Some(mut child) = v.lock().await.take() {
                    child.kill().await.unwrap();
                }
            }
        })
    }));
    let again = tokio::time::timeout(Duration::from_secs(120), p.generate(&reqs))
        .await
        .expect("generation finishes")
        .unwrap();
    assert!(victim.lock().await.is_none(), "the hook ran");
    assert_eq!(p.recoveries(), 2);
    assert_eq!(again, got);
    let left: Vec<_> = p.stages().iter().map(|s| s.worker.as_str()).collect();
    assert!(
        left.iter()
            .all(|w| *w == left[0] && *w != first_id && *w != victim_id),
        "{:?}",
        p.stages()
    );
    p.unload().await;
}
