//! Shared by the tests that run `ibench compare`: an OpenAI-compatible server on loopback (port 0)
//! that plays the simulated patient and the judge and injects faults, and helpers to run the binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const KEY: &str = "sk-ibench-test-7f3a9c1e5b";
pub const IBENCH: &str = env!("CARGO_BIN_EXE_ibench");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    TooMany,
    ServerError,
    Timeout,
    MalformedBody,
    Unreadable,
    None,
}

pub const PLAN: [Fault; 7] = [
    Fault::TooMany,
    Fault::ServerError,
    Fault::Timeout,
    Fault::MalformedBody,
    Fault::Unreadable,
    Fault::None,
    Fault::None,
];

#[derive(Default)]
pub struct Inner {
    /// Distinct request bodies in order of first arrival.
    pub distinct: HashMap<u64, usize>,
    /// Successful answers per body.
    pub answered: HashMap<u64, usize>,
    pub faults: HashMap<Fault, usize>,
    pub requests: usize,
    pub bad_auth: usize,
    pub profiles: usize,
}

pub struct MockState {
    pub inner: Mutex<Inner>,
    /// Answer at most this many calls; hold every later one forever (the client gets killed).
    pub hold_after: Mutex<Option<usize>>,
    pub answered_tx: watch::Sender<usize>,
    /// Judge-dialogue calls containing this text always fail with 500.
    pub always_fail: Option<String>,
    pub plan: Plan,
}

/// How faults are assigned to the first arrival of each distinct request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    Off,
    /// The k-th distinct request gets PLAN[k % 7]: every kind shows up.
    ByArrival,
    /// By the request's hash: the same requests fail in every run, whatever the order.
    ByHash,
}

pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    pub answered_rx: watch::Receiver<usize>,
}

impl Mock {
    pub async fn start(plan: Plan, always_fail: Option<&str>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (answered_tx, answered_rx) = watch::channel(0usize);
        let state = Arc::new(MockState {
            inner: Mutex::new(Inner::default()),
            hold_after: Mutex::new(None),
            answered_tx,
            always_fail: always_fail.map(String::from),
            plan,
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Mock {
            addr,
            state,
            answered_rx,
        }
    }
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn total_answered(&self) -> usize {
        self.state.inner.lock().unwrap().answered.values().sum()
    }
    pub fn answered_per_request(&self) -> HashMap<u64, usize> {
        self.state.inner.lock().unwrap().answered.clone()
    }
    pub fn repeated(&self) -> usize {
        self.state
            .inner
            .lock()
            .unwrap()
            .answered
            .values()
            .filter(|n| **n > 1)
            .count()
    }
}

pub fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

pub fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    if status == 429 {
        r.headers_mut().insert("retry-after", "0".parse().unwrap());
    }
    r
}

pub fn completion(content: &str) -> String {
    json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).to_string()
}

pub async fn handle(
    st: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let h = hash(&body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let system = v["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let user = v["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let seed = v["seed"].as_u64().unwrap_or(0);
    let fault = {
        let mut inner = st.inner.lock().unwrap();
        inner.requests += 1;
        if auth != format!("Bearer {KEY}") {
            inner.bad_auth += 1;
        }
        let first = !inner.distinct.contains_key(&h);
        let k = inner.distinct.len();
        inner.distinct.entry(h).or_insert(k);
        let mut f = match st.plan {
            _ if !first => Fault::None,
            Plan::Off => Fault::None,
            Plan::ByArrival => PLAN[k % PLAN.len()],
            Plan::ByHash => PLAN[(h % PLAN.len() as u64) as usize],
        };
        if f == Fault::Unreadable && seed != 0 {
            f = Fault::None;
        }
        if let Some(text) = &st.always_fail {
            if user.contains("The whole consultation") && user.contains(text.as_str()) {
                f = Fault::ServerError;
            }
        }
        if f != Fault::None {
            *inner.faults.entry(f).or_insert(0) += 1;
        }
        f
    };
    match fault {
        Fault::TooMany => return Ok(reply(429, "{\"error\": \"rate limited\"}".into())),
        // The error body echoes the credentials, as some servers do: the client must redact it.
        Fault::ServerError => {
            return Ok(reply(
                500,
                format!("{{\"error\": \"internal error for {auth}\"}}"),
            ))
        }
        Fault::Timeout => std::future::pending::<()>().await,
        Fault::MalformedBody => return Ok(reply(200, "{\"choices\": [{\"message\": ".into())),
        Fault::Unreadable | Fault::None => {}
    }
    let content = if fault == Fault::Unreadable {
        // A completed call whose reply cannot be read: the client stores it and re-asks.
        "I am not able to answer in that format, sorry.".to_string()
    } else if system.contains("SIMULATED PATIENT") {
        patient(&system, &user)
    } else if system.contains("EVALUATOR") {
        judge(&user, h)
    } else if system.contains("patient cases") {
        st.inner.lock().unwrap().profiles += 1;
        profile()
    } else {
        "unexpected request".to_string()
    };
    // Past the hold mark, never answer (the client is about to be killed).
    let hold = {
        let mut inner = st.inner.lock().unwrap();
        let answered: usize = inner.answered.values().sum();
        let hold = st.hold_after.lock().unwrap().is_some_and(|n| answered >= n);
        if !hold {
            *inner.answered.entry(h).or_insert(0) += 1;
            st.answered_tx.send_replace(answered + 1);
        }
        hold
    };
    if hold {
        std::future::pending::<()>().await;
    }
    Ok(reply(200, completion(&content)))
}

pub fn patient(system: &str, user: &str) -> String {
    let block = system
        .split("(id: fact):\n")
        .nth(1)
        .unwrap()
        .split("\n\nRules:")
        .next()
        .unwrap();
    let facts: Vec<(String, String)> = block
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .map(|l| {
            let (id, text) = l.split_once(": ").unwrap();
            (
                id.to_string(),
                text.trim_end_matches(" (warning sign)").to_string(),
            )
        })
        .collect();
    let asked = user.matches("\nConsultant:").count().max(1);
    let (id, text) = &facts[(asked - 1) % facts.len()];
    format!(
        "好的，我会这样回答：\n```json\n{}\n```",
        json!({"reply": text, "disclosed": [id, "not-a-fact"]})
    )
}

pub fn judge(user: &str, h: u64) -> String {
    if user.contains("Consultation A:") {
        return json!({"winner": if h.is_multiple_of(3) { "B" } else { "A" }, "reason": "r"})
            .to_string();
    }
    let dims = ["inquiry", "context_use", "accuracy", "safety", "empathy"];
    let score = |i: usize| 1 + ((h >> (i * 3)) % 5);
    let mut flags = Vec::new();
    if let Some(rest) = user.split("Red flags of this case:\n").nth(1) {
        for l in rest.lines().take_while(|l| l.starts_with("- ")) {
            flags.push(l[2..].split(':').next().unwrap().to_string());
        }
    }
    if h.is_multiple_of(2) {
        // Chinese punctuation and a trailing remark.
        let scores: Vec<String> = dims
            .iter()
            .enumerate()
            .map(|(i, d)| format!("“{d}”：{}", score(i)))
            .collect();
        let flag_part: Vec<String> = flags.iter().map(|f| format!("“{f}”：“是”")).collect();
        format!(
            "评分如下：｛“scores”：｛{}｝，“reasons”：｛“inquiry”：“问了持续时间，很好”｝，“red_flags”：｛{}｝｝ 以上。",
            scores.join("，"),
            flag_part.join("，")
        )
    } else {
        let scores: serde_json::Map<String, Value> = dims
            .iter()
            .enumerate()
            .map(|(i, d)| (d.to_string(), json!(score(i))))
            .collect();
        let flags: serde_json::Map<String, Value> =
            flags.iter().map(|f| (f.clone(), json!(false))).collect();
        format!(
            "{} Hope this helps!",
            json!({"scores": scores, "reasons": {"inquiry": "asked"}, "red_flags": flags})
        )
    }
}

pub fn profile() -> String {
    json!({"domain": "medical", "persona": "40岁男性", "facts": [
        {"id": "duration", "text": "疼了三天了", "question": "多久了？"},
        {"id": "severity", "text": "挺疼的", "question": "有多疼？"},
        {"id": "red_flag", "text": "还发烧，脖子硬", "question": "有没有发烧？", "red_flag": true}],
        "expected": ["问清楚再建议"]})
    .to_string()
}

/// The tiny fixtures with a context long enough for real prompts (their text stays garbage).
pub fn tiny_models(dir: &Path) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut out = Vec::new();
    for name in ["tiny-qwen3", "tiny-llama"] {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(root.join(name)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        let cfg_path = to.join("config.json");
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg["max_position_embeddings"] = json!(8192);
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        out.push(to.display().to_string());
    }
    out
}

pub fn args(
    mock: &Mock,
    work: &Path,
    models: &[String],
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--registry".into(),
        work.join("models.toml").display().to_string(),
        "--models-root".into(),
        work.display().to_string(),
        "--log-json".into(),
        "--log".into(),
        "warn,ibench_coordinator::eval::store=debug".into(),
        "compare".into(),
        "--models".into(),
    ];
    a.extend(models.iter().cloned());
    for x in [
        "--api-base",
        &mock.base(),
        "--simulator",
        "mock-patient",
        "--judge",
        "mock-judge",
        "--max-turns",
        "2",
        "--max-new-tokens",
        "6",
        "--no-early-stop",
        "--http-timeout",
        "0.5",
        "--http-attempts",
        "4",
        "--retry-base-ms",
        "1",
        "--bootstrap",
        "200",
        "--out",
        &out.display().to_string(),
    ] {
        a.push(x.to_string());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

pub fn command(args: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(IBENCH);
    c.args(args)
        .env("DASHSCOPE_API_KEY", KEY)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Runs to the end; returns stdout and stderr.
pub async fn run_to_end(args: &[String]) -> (String, String) {
    let out = command(args).output().await.unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "ibench failed: {}\nstdout:\n{so}\nstderr:\n{se}",
        out.status
    );
    (so, se)
}

/// Asserts the key appears in no file under `dir` and in none of `texts`.
pub fn assert_no_key(dir: &Path, texts: &[&str]) {
    for t in texts {
        assert!(!t.contains(KEY), "the API key leaked into the output");
    }
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                    "the API key leaked into {}",
                    p.display()
                );
            }
        }
    }
    assert!(
        files >= 8,
        "expected the run's outputs in {}",
        dir.display()
    );
}

pub fn read_json(p: PathBuf) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

pub fn stored_http_calls(dir: &Path) -> u64 {
    let store = ibench_coordinator::eval::store::Store::open(dir).unwrap();
    [
        "patient",
        "judge-turn",
        "judge-dialogue",
        "judge-pair",
        "profile",
    ]
    .iter()
    .map(|k| store.count(Some(k)).unwrap())
    .sum()
}

/// Starts an `ibench worker` process (CPU) for the coordinator at `url`, named `name`, with
/// `extra` flags; the caller waits for its registration.
pub fn spawn_worker(
    url: &str,
    name: &str,
    token: &str,
    registry: &Path,
    extra: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(IBENCH)
        .args([
            "worker",
            "--coordinator",
            url,
            "--devices",
            "cpu",
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
        ])
        .args(extra)
        .env("IBENCH_CLUSTER_TOKEN", token)
        .env("IBENCH_REGISTRY", registry)
        .env("IBENCH_LOG", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
