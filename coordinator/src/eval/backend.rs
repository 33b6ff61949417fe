//! Chat backends for the simulated patient and the judge: the [`ChatBackend`] trait, its
//! OpenAI-compatible HTTP implementation (DashScope by default) and its `local:MODEL`
//! implementation over a [`ModelPool`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ibench_shared::{ChatMessage, GenerationParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::pool::{GenRequest, ModelPool};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// DashScope's OpenAI-compatible endpoint, the default `--api-base`.
pub const DASHSCOPE_BASE: &str = "https://dashscope.aliyuncs.com/compatible-mode/v1";

/// One chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: usize,
    pub temperature: f32,
    /// Sent as OpenAI's `seed`; also distinguishes repeats and re-asks in the store.
    pub seed: u64,
}

/// A choice read from next-token log-probabilities: the reply starts with `prefix`, and the
/// probability of each of `choices` as the next token is asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceRequest {
    pub messages: Vec<ChatMessage>,
    pub prefix: String,
    pub choices: Vec<String>,
}

/// Several choices in one reply, written as `slots[0].prefix, slots[0].fill, slots[1].prefix,
/// ...`; after each prefix, the probability of each of the slot's `choices` as the next token is
/// read, each later slot seeing the earlier ones filled with their `fill` (teacher forcing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotsRequest {
    pub messages: Vec<ChatMessage>,
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub prefix: String,
    pub choices: Vec<String>,
    /// What stands in the slot for the slots after it (ignored for the last).
    pub fill: String,
}

impl SlotsRequest {
    /// One choice after `prefix`.
    pub fn single(messages: Vec<ChatMessage>, prefix: &str, choices: &[&str]) -> Self {
        Self {
            messages,
            slots: vec![Slot {
                prefix: prefix.into(),
                choices: choices.iter().map(|c| c.to_string()).collect(),
                fill: String::new(),
            }],
        }
    }

    /// The same slots as single choices: slot k's prefix holds every earlier prefix and fill.
    pub fn as_single_choices(&self) -> Vec<ChoiceRequest> {
        let mut text = String::new();
        self.slots
            .iter()
            .map(|s| {
                text.push_str(&s.prefix);
                let r = ChoiceRequest {
                    messages: self.messages.clone(),
                    prefix: text.clone(),
                    choices: s.choices.clone(),
                };
                text.push_str(&s.fill);
                r
            })
            .collect()
    }
}

/// Per slot, the probability of each choice (normalised over the slot's choices).
pub type SlotProbs = Vec<Vec<f64>>;

/// Why a simulator/judge/model call failed, after retries.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum CallError {
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("timed out after {0:.0} s")]
    Timeout(f64),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("gave up after {attempts} attempts; last error: {last}")]
    Exhausted { attempts: u32, last: Box<CallError> },
    #[error("the reply could not be read as the expected structured output after {attempts} attempts: {snippet}")]
    Unparseable { attempts: u32, snippet: String },
    #[error("local engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Load(String),
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
}

impl CallError {
    /// 429, 5xx, timeouts, broken connections and malformed bodies are worth another try.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Http { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            CallError::Timeout(_) | CallError::Transport(_) | CallError::Malformed(_) => true,
            _ => false,
        }
    }
}

/// The simulator's and the judge's view of a language model.
pub trait ChatBackend: Send + Sync {
    /// What identifies the backend's outputs in store keys (never a secret), e.g.
    /// `openai:qwen-plus@https://...` or `local:qwen2.5-coder-0.5b-instruct@/path`.
    fn id(&self) -> &str;
    /// Completes each request; outputs in request order. Local backends run them as one batch.
    fn complete(&self, reqs: Vec<ChatRequest>) -> BoxFuture<'_, Vec<Result<String, CallError>>>;
    /// Whether [`ChatBackend::choose`] is available (local models; not HTTP APIs).
    fn supports_choices(&self) -> bool;
    /// The probabilities of each slot's choices, per request.
    fn choose(&self, reqs: Vec<SlotsRequest>) -> BoxFuture<'_, Vec<Result<SlotProbs, CallError>>>;
}

/// An API key that never prints: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Option<Self> {
        let k = key.into().trim().to_string();
        (!k.is_empty()).then_some(Self(k))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Replaces any occurrence of the key in `text` (error bodies may echo it).
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, "***")
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ApiKey::new(s).ok_or_else(|| "the API key is empty".to_string())
    }
}

/// Timeouts and retries of HTTP calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total tries per call (1 = no retry).
    pub attempts: u32,
    /// The first backoff; doubled after every failed try.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Per-try limit for the whole request.
    pub timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay_ms: 1000,
            max_delay_ms: 30_000,
            timeout_ms: 120_000,
        }
    }
}

impl RetryPolicy {
    /// The wait before try `n + 1` after `n` failed tries (n >= 1); `Retry-After` wins when given
    /// and not above the cap.
    pub fn delay(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay_ms
            .saturating_mul(1u64 << (failed - 1).min(20));
        let d = Duration::from_millis(exp.min(self.max_delay_ms));
        match retry_after {
            Some(r) => r.min(Duration::from_millis(self.max_delay_ms)),
            None => d,
        }
    }
}

/// Any OpenAI-compatible `/chat/completions` endpoint.
pub struct OpenAiBackend {
    client: reqwest::Client,
    url: String,
    model: String,
    key: Option<ApiKey>,
    retry: RetryPolicy,
    id: String,
    limit: tokio::sync::Semaphore,
}

impl OpenAiBackend {
    /// `base` is the API base (…/v1); `concurrency` bounds calls in flight.
    pub fn new(
        base: &str,
        model: &str,
        key: Option<ApiKey>,
        retry: RetryPolicy,
        concurrency: usize,
    ) -> Result<Self, CallError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(retry.timeout_ms))
            .connect_timeout(Duration::from_millis(retry.timeout_ms.min(30_000)))
            .build()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let base = base.trim_end_matches('/');
        Ok(Self {
            client,
            url: format!("{base}/chat/completions"),
            model: model.to_string(),
            key,
            retry,
            id: format!("openai:{model}@{base}"),
            limit: tokio::sync::Semaphore::new(concurrency.max(1)),
        })
    }

    fn redact(&self, s: &str) -> String {
        match &self.key {
            Some(k) => k.redact(s),
            None => s.to_string(),
        }
    }

    async fn try_once(&self, body: &Value) -> Result<String, (CallError, Option<Duration>)> {
        let mut req = self.client.post(&self.url).json(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose());
        }
        let resp = req.send().await.map_err(|e| (self.transport(e), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = resp.text().await.map_err(|e| (self.transport(e), None))?;
        if !status.is_success() {
            let body: String = self.redact(&text).chars().take(300).collect();
            return Err((
                CallError::Http {
                    status: status.as_u16(),
                    body,
                },
                retry_after,
            ));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            let snippet: String = self.redact(&text).chars().take(120).collect();
            (
                CallError::Malformed(format!("not JSON ({e}): {snippet}")),
                None,
            )
        })?;
        match v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
        {
            Some(c) => Ok(c.to_string()),
            None => Err((
                CallError::Malformed("no choices[0].message.content".into()),
                None,
            )),
        }
    }

    fn transport(&self, e: reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout(self.retry.timeout_ms as f64 / 1000.0)
        } else {
            // Strip the URL's query (none is used) and redact just in case.
            CallError::Transport(self.redact(&e.without_url().to_string()))
        }
    }

    async fn call(&self, req: ChatRequest) -> Result<String, CallError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| CallError::Transport("client shut down".into()))?;
        let body = json!({
            "model": self.model,
            "messages": req.messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "seed": req.seed,
            "stream": false,
        });
        let mut failed = 0;
        loop {
            match self.try_once(&body).await {
                Ok(text) => return Ok(text),
                Err((e, retry_after)) => {
                    failed += 1;
                    if !e.retryable() {
                        return Err(e);
                    }
                    if failed >= self.retry.attempts {
                        return Err(CallError::Exhausted {
                            attempts: failed,
                            last: Box::new(e),
                        });
                    }
                    let wait = self.retry.delay(failed, retry_after);
                    tracing::warn!(backend = %self.id, attempt = failed, error = %e, wait_ms = wait.as_millis() as u64, "call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

impl ChatBackend for OpenAiBackend {
    fn id(&self) -> &str {
        &self.id
    }
    fn complete(&self, reqs: Vec<ChatRequest>) -> BoxFuture<'_, Vec<Result<String, CallError>>> {
        Box::pin(futures_util::future::join_all(
            reqs.into_iter().map(|r| self.call(r)),
        ))
    }
    fn supports_choices(&self) -> bool {
        false
    }
    fn choose(&self, reqs: Vec<SlotsRequest>) -> BoxFuture<'_, Vec<Result<SlotProbs, CallError>>> {
        Box::pin(async move {
            reqs.iter()
                .map(|_| Err(CallError::Unsupported("log-probability choices")))
                .collect()
        })
    }
}

/// `local:MODEL`: a model of the pool, the same engine the models under test run on.
pub struct LocalBackend {
    pool: Arc<dyn ModelPool>,
    model: String,
    id: String,
}

impl LocalBackend {
    pub fn new(pool: Arc<dyn ModelPool>, model: &str) -> Result<Self, CallError> {
        let identity = pool
            .identity(model)
            .map_err(|e| CallError::Engine(e.to_string()))?;
        Ok(Self {
            pool,
            model: model.to_string(),
            id: format!("local:{identity}"),
        })
    }
    pub fn model(&self) -> &str {
        &self.model
    }
}

/// Softmax of log-probabilities, for choices.
pub fn normalise(logprobs: &[f32]) -> Vec<f64> {
    let max = logprobs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![1.0 / logprobs.len().max(1) as f64; logprobs.len()];
    }
    let e: Vec<f64> = logprobs.iter().map(|l| ((l - max) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

impl ChatBackend for LocalBackend {
    fn id(&self) -> &str {
        &self.id
    }
    fn complete(&self, reqs: Vec<ChatRequest>) -> BoxFuture<'_, Vec<Result<String, CallError>>> {
        Box::pin(async move {
            let n = reqs.len();
            let gens = reqs
                .into_iter()
                .map(|r| GenRequest {
                    messages: r.messages,
                    params: GenerationParams {
                        max_new_tokens: r.max_tokens,
                        temperature: r.temperature,
                        top_p: if r.temperature > 0.0 { 0.9 } else { 1.0 },
                        seed: r.seed,
                        ..Default::default()
                    },
                })
                .collect();
            let outs = self.pool.generate(&self.model, gens).await;
            debug_assert_eq!(outs.len(), n);
            outs.into_iter()
                .map(|o| {
                    o.map(|o| o.text)
                        .map_err(|e| CallError::Engine(e.to_string()))
                })
                .collect()
        })
    }
    fn supports_choices(&self) -> bool {
        true
    }
    fn choose(&self, reqs: Vec<SlotsRequest>) -> BoxFuture<'_, Vec<Result<SlotProbs, CallError>>> {
        Box::pin(async move {
            let n = reqs.len();
            match self.pool.choose_slots(&self.model, reqs).await {
                Ok(all) => all
                    .iter()
                    .map(|slots| Ok(slots.iter().map(|lp| normalise(lp)).collect()))
                    .collect(),
                Err(e) => (0..n)
                    .map(|_| Err(CallError::Engine(e.to_string())))
                    .collect(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_prints_and_is_redacted() {
        let k: ApiKey = "sk-secret-123".parse().unwrap();
        assert_eq!(format!("{k:?} {k}"), "ApiKey(***) ***");
        assert_eq!(k.redact("bad key sk-secret-123 given"), "bad key *** given");
        assert!("  ".parse::<ApiKey>().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay_ms: 100,
            max_delay_ms: 1000,
            timeout_ms: 1,
        };
        let ms = |n, ra| p.delay(n, ra).as_millis();
        assert_eq!(
            (ms(1, None), ms(2, None), ms(3, None), ms(5, None)),
            (100, 200, 400, 1000)
        );
        assert_eq!(ms(1, Some(Duration::from_millis(300))), 300);
        assert_eq!(ms(1, Some(Duration::from_secs(60))), 1000);
    }

    #[test]
    fn retryable_errors() {
        assert!(CallError::Http {
            status: 429,
            body: String::new()
        }
        .retryable());
        assert!(CallError::Http {
            status: 503,
            body: String::new()
        }
        .retryable());
        assert!(!CallError::Http {
            status: 401,
            body: String::new()
        }
        .retryable());
        assert!(CallError::Timeout(1.0).retryable());
        assert!(!CallError::Unsupported("x").retryable());
    }

    #[test]
    fn slots_as_single_choices_carry_the_earlier_fills() {
        let r = SlotsRequest {
            messages: vec![ChatMessage::user("q")],
            slots: vec![
                Slot {
                    prefix: "a:".into(),
                    choices: vec!["1".into()],
                    fill: " 3".into(),
                },
                Slot {
                    prefix: "\nb:".into(),
                    choices: vec!["2".into()],
                    fill: " 3".into(),
                },
            ],
        };
        let s = r.as_single_choices();
        assert_eq!(
            (s[0].prefix.as_str(), s[1].prefix.as_str()),
            ("a:", "a: 3\nb:")
        );
        assert_eq!(s[1].choices, vec!["2"]);
    }

    #[test]
    fn normalise_is_a_softmax() {
        let p = normalise(&[0.0, (2.0f32).ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-6 && (p[1] - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(
            normalise(&[f32::NEG_INFINITY, f32::NEG_INFINITY]),
            vec![0.5, 0.5]
        );
    }
}
