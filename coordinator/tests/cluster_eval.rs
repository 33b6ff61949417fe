//! `ibench compare --coordinator URL`: an evaluation of two models at once on a cluster of an
//! in-process coordinator (the Models service over a ClusterPool, 127.0.0.1:0) and three
//! `ibench worker` processes, each model split into three stages; one worker is killed mid-run.
//! The transcripts must equal those of the same evaluation in one process, no conversation may be
//! lost, and the step log must show both models' pipelines working at the same time.
//! The patient and judge are the loopback OpenAI-compatible mock of `common`.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ibench_coordinator::cluster::{serve, ClusterOptions, ClusterPool, OnStep, WorkerRegistry};
use ibench_coordinator::eval::pool::ModelPool;
use ibench_proto::ClusterToken;
use ibench_shared::placement::PlacementOptions;
use serde_json::Value;

const TOKEN: &str = "test-cluster-eval-secret";

/// The transcripts of a run: per (model folder name, scenario), the messages and how it ended.
fn transcripts(dir: &Path) -> Vec<(String, String, Value, Value)> {
    let text = std::fs::read_to_string(dir.join("transcripts.jsonl")).unwrap();
    let mut out: Vec<(String, String, Value, Value)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| {
            let model = Path::new(r["model"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                model,
                r["scenario"].as_str().unwrap().to_string(),
                r["messages"].clone(),
                r["end"].clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_at_once_on_three_workers_survive_a_killed_worker_with_equal_transcripts() {
    let mock = Mock::start(Plan::Off, None).await;
    let work = tempfile::tempdir().unwrap();
    let models = tiny_models(work.path());
    let extra = ["--limit", "3", "--no-turn-judging"];

    // The reference: the same evaluation in one process.
    let ref_out = work.path().join("one-process");
    run_to_end(&args(&mock, work.path(), &models, &ref_out, &extra)).await;
    let want = transcripts(&ref_out);
    assert_eq!(want.len(), 6, "2 models x 3 scenarios");

    // The cluster: three workers; every model in three stages, so both models share all three.
    let registry = Arc::new(WorkerRegistry::new(
        ClusterToken::new(TOKEN).unwrap(),
        Duration::from_secs(2),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut workers: Vec<(String, tokio::process::Child)> = (0..3)
        .map(|i| {
            let name = format!("w{i}");
            let child = spawn_worker(&url, &name, TOKEN, &work.path().join("models.toml"), &[]);
            (name, child)
        })
        .collect();
    // Kill w1 after the 12th step of all pipelines together (both models are mid-dialogue).
    let victim = Arc::new(tokio::sync::Mutex::new(Some(workers.remove(1).1)));
    let steps: Arc<Mutex<Vec<String>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<usize>>> = Arc::default();
    let on_step = {
        let (victim, steps, killed_at) = (victim.clone(), steps.clone(), killed_at.clone());
        OnStep(Arc::new(move |model: &str, _n| {
            let total = {
                let mut s = steps.lock().unwrap();
                s.push(model.to_string());
                s.len()
            };
            let (victim, killed_at) = (victim.clone(), killed_at.clone());
            Box::pin(async move {
                if total == 12 {
                    if let Some(mut child) = victim.lock().await.take() {
                        child.kill().await.unwrap();
                        *killed_at.lock().unwrap() = Some(total);
                    }
                }
            })
        }))
    };
    let opts = ClusterOptions {
        min_stages: 3,
        kv_tokens: 256,
        placement: PlacementOptions { reserve_bytes: 0 },
        rpc_timeout: Duration::from_secs(120),
        on_step: Some(on_step),
        ..Default::default()
    };
    let model_registry =
        ibench_shared::Registry::load(&work.path().join("models.toml"), work.path()).unwrap();
    let pool: Arc<dyn ModelPool> =
        Arc::new(ClusterPool::new(model_registry, registry.clone(), opts));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, registry.clone(), Some(pool), async {
        let _ = stopped.await;
    }));
    registry
        .wait_for_workers(3, Duration::from_secs(120))
        .await
        .unwrap();

    let out = work.path().join("cluster");
    let mut a = args(&mock, work.path(), &models, &out, &extra);
    a.extend(["--coordinator".to_string(), url.clone()]);
    let mut cmd = command(&a);
    cmd.env("IBENCH_CLUSTER_TOKEN", TOKEN);
    let res = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("the cluster run finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "compare failed:\n{stderr}");

    assert_eq!(
        *killed_at.lock().unwrap(),
        Some(12),
        "the worker was killed mid-run"
    );
    let steps = steps.lock().unwrap().clone();
    assert!(
        steps.len() > 12,
        "the run went on after the kill: {steps:?}"
    );
    // Both models' steps interleave: A, then B, then A again (their pipelines ran side by side).
    let (a_name, b_name) = (&steps[0], steps.iter().find(|m| *m != &steps[0]).unwrap());
    let first_b = steps.iter().position(|m| m == b_name).unwrap();
    let last_a = steps.iter().rposition(|m| m == a_name).unwrap();
    assert!(
        first_b < last_a,
        "the models ran one after the other, not together: {steps:?}"
    );
    assert!(
        registry.workers().iter().all(|w| w.name != "w1"),
        "the dead worker left the registry"
    );

    let got = transcripts(&out);
    assert_eq!(got.len(), want.len(), "no conversation lost");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g, w,
            "the cluster's transcript differs from the one-process run"
        );
    }
    for (_, _, _, end) in &got {
        assert_ne!(end, "failed", "a conversation failed on the cluster");
    }
    // Every dialogue was judged once: the stored judge calls equal the dialogues.
    let store = ibench_coordinator::eval::store::Store::open(&out).unwrap();
    assert_eq!(store.count(Some("judge-dialogue")).unwrap(), 6);
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_says_what_to_do_when_the_coordinator_is_unreachable_or_refuses() {
    let mock = Mock::start(Plan::Off, None).await;
    let work = tempfile::tempdir().unwrap();
    let models = tiny_models(work.path());
    // A port that was free a moment ago: nothing listens there now.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut a = args(&mock, work.path(), &models, &work.path().join("x"), &[]);
    a.extend(["--coordinator".to_string(), dead.clone()]);
    let res = command(&a).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        stderr.contains(&format!("connecting to the coordinator at {dead}")),
        "{stderr}"
    );

    // A coordinator with a token refuses a client without it, and names the model it was asked.
    let registry = Arc::new(WorkerRegistry::new(
        ClusterToken::new(TOKEN).unwrap(),
        Duration::from_secs(2),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let model_registry =
        ibench_shared::Registry::load(&work.path().join("models.toml"), work.path()).unwrap();
    let pool: Arc<dyn ModelPool> = Arc::new(ClusterPool::new(
        model_registry,
        registry.clone(),
        ClusterOptions::default(),
    ));
    tokio::spawn(serve(
        listener,
        registry,
        Some(pool),
        std::future::pending(),
    ));
    let mut a = args(&mock, work.path(), &models, &work.path().join("y"), &[]);
    a.extend(["--coordinator".to_string(), url]);
    let res = command(&a).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(stderr.contains("token"), "{stderr}");
    assert!(stderr.contains(&models[0]), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_api_answers_as_the_in_process_pool() {
    use ibench_coordinator::cluster::RemotePool;
    use ibench_coordinator::eval::backend::{Slot, SlotsRequest};
    use ibench_coordinator::eval::pool::{GenRequest, InProcessPool};
    use ibench_shared::{ChatMessage, GenerationParams};

    let work = tempfile::tempdir().unwrap();
    let models = tiny_models(work.path());
    let registry = Arc::new(WorkerRegistry::new(
        ClusterToken::new(TOKEN).unwrap(),
        Duration::from_secs(2),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _workers: Vec<_> = (0..2)
        .map(|i| {
            spawn_worker(
                &url,
                &format!("m{i}"),
                TOKEN,
                &work.path().join("models.toml"),
                &[],
            )
        })
        .collect();
    let load =
        || ibench_shared::Registry::load(&work.path().join("models.toml"), work.path()).unwrap();
    let opts = ClusterOptions {
        min_stages: 2,
        kv_tokens: 256,
        placement: PlacementOptions { reserve_bytes: 0 },
        rpc_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let cluster: Arc<dyn ModelPool> = Arc::new(ClusterPool::new(load(), registry.clone(), opts));
    tokio::spawn(serve(
        listener,
        registry.clone(),
        Some(cluster),
        std::future::pending(),
    ));
    registry
        .wait_for_workers(2, Duration::from_secs(120))
        .await
        .unwrap();
    let channel = ibench_proto::connect(&url, None).await.unwrap();
    let remote = RemotePool::new(
        ibench_proto::models_client(channel, ClusterToken::new(TOKEN).unwrap()),
        &url,
    );
    remote.describe(&models).await.unwrap();
    let local = InProcessPool::new(load(), None);
    let m = &models[0];
    assert_eq!(remote.identity(m).unwrap(), local.identity(m).unwrap());
    // An unknown model fails at describe, with its name.
    let e = remote
        .describe(&["no-such-model".to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-model"), "{e}");

    let turns: Vec<GenRequest> = ["Hello there", "我头疼", "How long?"]
        .iter()
        .map(|t| GenRequest {
            messages: vec![ChatMessage::system("Be brief."), ChatMessage::user(*t)],
            params: GenerationParams {
                max_new_tokens: 12,
                ..Default::default()
            },
        })
        .collect();
    let got: Vec<_> = remote
        .generate(m, turns.clone())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let want: Vec<_> = local
        .generate(m, turns)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, want);

    let slots = vec![SlotsRequest {
        messages: vec![ChatMessage::user("Rate it")],
        slots: vec![
            Slot {
                prefix: "{\"a\": ".into(),
                choices: (1..=5).map(|d| d.to_string()).collect(),
                fill: "3".into(),
            },
            Slot {
                prefix: ", \"b\": ".into(),
                choices: vec!["yes".into(), "no".into()],
                fill: String::new(),
            },
            // Nothing between this slot and the one before: the same position is read.
            Slot {
                prefix: String::new(),
                choices: vec!["1".into(), "2".into()],
                fill: String::new(),
            },
        ],
    }];
    let got = remote.choose_slots(m, slots.clone()).await.unwrap();
    let want = local.choose_slots(m, slots).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 3);
    for (g, w) in got[0].iter().zip(&want[0]) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-3, "cluster {g:?} vs one process {w:?}");
        }
    }
    remote.unload(m).await.unwrap();
}
