//! The evaluation driver: for every (model, scenario) a conversation state machine
//! (opening -> model turn -> patient turn -> ... -> judge), all conversations of a model at once.
//!
//! One event loop drives everything: every conversation whose next step is a model turn joins one
//! batched `generate` call per model; patient and judge calls run concurrently; each call's result
//! is stored as it completes (see [`super::calls`]). Models under test run `concurrent_models` at
//! a time (one after another in one process; side by side on a cluster), and each is unloaded when
//! its conversations are done; judging of one model overlaps the next model's dialogues.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use ibench_shared::{ChatMessage, FinishReason, GenerationParams, Role as ChatRole};
use serde::{Deserialize, Serialize};

use super::backend::{BoxFuture, CallError, ChatBackend};
use super::calls::{Calls, Failure, Role, RoleCounts};
use super::judge::{self, Target, Verdict};
use super::patient::{self, PatientTurn};
use super::pool::{GenOutput, GenRequest, ModelPool};
use super::scenario::{self, Domain, Language, Scenario, Selection};
use super::EvalError;

/// Where the scenarios come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioSource {
    /// `builtin` or a JSONL file, with a selection.
    Set {
        source: String,
        selection: Selection,
    },
    /// Opening lines; the simulator invents each hidden profile.
    Prompts(Vec<String>),
}

/// What the models under test are told before the opening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemPrompt {
    /// A neutral one-line role per domain and language (docs/evaluation.md).
    Default,
    None,
    Custom(String),
}

/// Dialogue (multi-turn with the simulated patient), teacher-forced turns, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dialogue,
    Turn,
    Both,
}

impl Mode {
    pub fn dialogue(self) -> bool {
        matches!(self, Mode::Dialogue | Mode::Both)
    }
    pub fn turn(self) -> bool {
        matches!(self, Mode::Turn | Mode::Both)
    }
}

/// The checked settings of one evaluation (what `run.json` in the run directory records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub models: Vec<String>,
    pub scenarios: ScenarioSource,
    pub mode: Mode,
    /// Model turns per dialogue at most (and teacher-forced turns per scenario).
    pub max_turns: usize,
    pub generation: GenerationParams,
    pub system_prompt: SystemPrompt,
    /// End a dialogue when the model's reply asks no question (it has concluded).
    pub stop_on_conclusion: bool,
    /// Judge every model turn, not only the whole dialogue.
    pub judge_turns: bool,
    pub judge_repeats: usize,
    /// Pairwise judging in both orders.
    pub pairwise: bool,
    pub bootstrap_resamples: usize,
    pub out: PathBuf,
}

impl EvalConfig {
    pub fn validate(&self) -> Result<(), EvalError> {
        let bad = |s: &str| Err(EvalError::Config(s.into()));
        if self.models.is_empty() {
            return bad("give at least one model with --models");
        }
        let mut seen = BTreeSet::new();
        for m in &self.models {
            if !seen.insert(m) {
                return Err(EvalError::Config(format!("model '{m}' is listed twice")));
            }
        }
        if self.max_turns == 0 {
            return bad("--max-turns must be at least 1");
        }
        if self.judge_repeats == 0 {
            return bad("--judge-repeats must be at least 1");
        }
        if let ScenarioSource::Prompts(p) = &self.scenarios {
            if p.is_empty() || p.iter().any(|x| x.trim().is_empty()) {
                return bad("--prompts needs non-empty opening lines");
            }
        }
        self.generation
            .validate()
            .map_err(|e| EvalError::Config(e.to_string()))
    }
}

/// The default system prompt of the models under test.
pub fn default_system_prompt(lang: Language, domain: Domain) -> &'static str {
    match (lang, domain) {
        (Language::Zh, Domain::Medical) => "你是一名专业的医疗咨询助手。",
        (Language::Zh, Domain::Psychological) => "你是一名专业的心理咨询师。",
        (Language::En, Domain::Medical) => "You are a professional medical consultant.",
        (Language::En, Domain::Psychological) => "You are a professional psychological counsellor.",
    }
}

/// Whether a reply asks the patient anything.
pub fn asks_question(text: &str) -> bool {
    text.contains('?') || text.contains('？')
}

/// One model turn of a dialogue, with the patient's answer to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    pub reply: String,
    pub finish_reason: FinishReason,
    pub completion_tokens: usize,
    pub verdict: Option<Verdict>,
    pub patient: Option<PatientTurn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The model's reply asked nothing more.
    Concluded,
    MaxTurns,
    /// A model or simulator call failed for good; not scored.
    Failed,
}

/// One (model, scenario) dialogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogueRecord {
    pub model: String,
    pub scenario: String,
    /// As the model saw them (system prompt first when there is one).
    pub messages: Vec<ChatMessage>,
    pub turns: Vec<TurnRecord>,
    pub end: End,
    pub error: Option<String>,
    /// Fact ids the patient disclosed, in order.
    pub disclosed: Vec<String>,
    pub facts_total: usize,
    pub verdict: Option<Verdict>,
}

impl DialogueRecord {
    pub fn fact_rate(&self) -> f64 {
        self.disclosed.len() as f64 / self.facts_total.max(1) as f64
    }
    /// Scored: it completed and the judge gave a dialogue verdict.
    pub fn scored(&self) -> bool {
        self.end != End::Failed && self.verdict.is_some()
    }
}

/// One teacher-forced turn: the model's reply to a fixed history, judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnModeRecord {
    pub model: String,
    pub scenario: String,
    /// How many (question, answer) pairs of the profile precede the reply.
    pub turn: usize,
    pub history: Vec<ChatMessage>,
    pub reply: Option<String>,
    pub verdict: Option<Verdict>,
    pub error: Option<String>,
}

/// Pairwise judging of two models on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub a: String,
    pub b: String,
    pub scenario: String,
    /// A's share when A was shown first (1 win, 0.5 tie, 0 loss).
    pub a_first: Option<f64>,
    /// A's share when B was shown first.
    pub b_first: Option<f64>,
}

impl PairRecord {
    /// The position-balanced share of A, when both orders were judged.
    pub fn a_share(&self) -> Option<f64> {
        Some((self.a_first? + self.b_first?) / 2.0)
    }
}

/// Everything an evaluation produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub scenarios: Vec<Scenario>,
    pub dialogues: Vec<DialogueRecord>,
    pub turn_mode: Vec<TurnModeRecord>,
    pub pairs: Vec<PairRecord>,
    pub failures: Vec<Failure>,
    pub counts: Vec<(Role, RoleCounts)>,
    pub simulator: String,
    pub judge: String,
}

/// What the driver runs on.
pub struct Env {
    pub pool: Arc<dyn ModelPool>,
    pub simulator: Arc<dyn ChatBackend>,
    pub judge: Arc<dyn ChatBackend>,
    /// Models never unloaded between models under test (local simulator/judge).
    pub keep_loaded: Vec<String>,
    /// Models under test whose conversations run at the same time (1: one after another).
    pub concurrent_models: usize,
    pub progress: indicatif::ProgressBar,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    NeedModel,
    NeedPatient,
    Done,
}

struct Conv {
    model: usize,
    scenario: usize,
    rec: DialogueRecord,
    state: State,
    busy: bool,
    /// Turn verdicts and the dialogue verdict still to come.
    judging: usize,
}

enum Slot {
    Conv(usize),
    Turn(usize),
}

enum Event {
    /// A batch of the model with this index.
    Model(usize, Vec<(Slot, Result<GenOutput, CallError>)>),
    Patient(usize, Result<PatientTurn, CallError>),
    TurnVerdict(usize, usize, Result<Verdict, CallError>),
    DialogueVerdict(usize, Result<Verdict, CallError>),
    TurnModeVerdict(usize, Result<Verdict, CallError>),
}

/// Resolves the scenarios: a set with its selection, or profiles invented for `--prompts` (each a
/// stored simulator call; a failed invention is counted and its opening left out).
pub async fn resolve_scenarios(
    cfg: &EvalConfig,
    calls: &Calls,
    env: &Env,
) -> Result<Vec<Scenario>, EvalError> {
    match &cfg.scenarios {
        ScenarioSource::Set { source, selection } => selection.apply(scenario::load(source)?),
        ScenarioSource::Prompts(prompts) => {
            env.progress.set_message("inventing patient profiles");
            let futs = prompts.iter().enumerate().map(|(n, p)| {
                patient::invent(calls, env.simulator.as_ref(), n, p, cfg.generation.seed)
            });
            let results = futures_util::future::join_all(futs).await;
            let mut out = Vec::new();
            for (p, r) in prompts.iter().zip(results) {
                match r {
                    Ok(s) => out.push(s),
                    Err(e) => calls.fail(Role::Simulator, format!("invent profile for \"{p}\""), e),
                }
            }
            if out.is_empty() {
                return Err(EvalError::Scenarios(
                    "the simulator could not invent a profile for any opening (see the failures above)".into(),
                ));
            }
            Ok(out)
        }
    }
}

fn opening_messages(cfg: &EvalConfig, s: &Scenario) -> Vec<ChatMessage> {
    let mut m = Vec::new();
    match &cfg.system_prompt {
        SystemPrompt::Default => m.push(ChatMessage::system(default_system_prompt(
            s.language, s.domain,
        ))),
        SystemPrompt::Custom(t) => m.push(ChatMessage::system(t.clone())),
        SystemPrompt::None => {}
    }
    m.push(ChatMessage::user(s.opening.clone()));
    m
}

/// The fixed history of teacher-forced turn `t`: the opening, then the profile's first `t` facts
/// as (consultant question, patient answer) pairs.
pub fn turn_mode_history(cfg: &EvalConfig, s: &Scenario, t: usize) -> Vec<ChatMessage> {
    let mut m = opening_messages(cfg, s);
    for f in s.profile.facts.iter().take(t) {
        m.push(ChatMessage::assistant(f.question.clone()));
        m.push(ChatMessage::user(f.text.clone()));
    }
    m
}

/// Runs the whole evaluation.
pub async fn run(cfg: &EvalConfig, calls: &Calls, env: &Env) -> Result<RunResults, EvalError> {
    cfg.validate()?;
    for m in &cfg.models {
        env.pool
            .identity(m)
            .map_err(|e| EvalError::Model(e.to_string()))?;
    }
    let scenarios = resolve_scenarios(cfg, calls, env).await?;
    let sim = env.simulator.as_ref();
    let jud = env.judge.as_ref();

    let mut convs: Vec<Conv> = Vec::new();
    let mut tms: Vec<(usize, TurnModeRecord)> = Vec::new();
    for (mi, model) in cfg.models.iter().enumerate() {
        for (si, s) in scenarios.iter().enumerate() {
            if cfg.mode.dialogue() {
                convs.push(Conv {
                    model: mi,
                    scenario: si,
                    rec: DialogueRecord {
                        model: model.clone(),
                        scenario: s.id.clone(),
                        messages: opening_messages(cfg, s),
                        turns: Vec::new(),
                        end: End::MaxTurns,
                        error: None,
                        disclosed: Vec::new(),
                        facts_total: s.profile.facts.len(),
                        verdict: None,
                    },
                    state: State::NeedModel,
                    busy: false,
                    judging: 0,
                });
            }
            if cfg.mode.turn() {
                for t in 0..cfg.max_turns.min(s.profile.facts.len() + 1) {
                    tms.push((
                        si,
                        TurnModeRecord {
                            model: model.clone(),
                            scenario: s.id.clone(),
                            turn: t,
                            history: turn_mode_history(cfg, s, t),
                            reply: None,
                            verdict: None,
                            error: None,
                        },
                    ));
                }
            }
        }
    }
    env.progress
        .set_length((2 * convs.len() + 2 * tms.len()) as u64);
    env.progress.set_position(0);

    let mut futs: FuturesUnordered<BoxFuture<'_, Event>> = FuturesUnordered::new();
    let n_models = cfg.models.len();
    let window = env.concurrent_models.max(1);
    // Models whose turns are being generated, and the next one to start.
    let mut active: Vec<usize> = Vec::new();
    let mut next_model = 0usize;
    let mut tm_started = vec![false; tms.len()];
    let mut tm_generated = vec![false; tms.len()];
    let mut model_busy = vec![false; n_models];
    let seed = cfg.generation.seed;

    loop {
        // Start models up to the window; retire (unload) those with nothing left to generate,
        // until no more change (a resumed model may have nothing left at all).
        loop {
            while active.len() < window && next_model < n_models {
                active.push(next_model);
                next_model += 1;
            }
            let mut retired = None;
            for (k, &m) in active.iter().enumerate() {
                let convs_done = convs
                    .iter()
                    .filter(|c| c.model == m)
                    .all(|c| c.state == State::Done);
                let tms_done = tms
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, r))| r.model == cfg.models[m])
                    .all(|(i, _)| tm_generated[i]);
                if convs_done && tms_done && !model_busy[m] {
                    retired = Some(k);
                    break;
                }
            }
            let Some(k) = retired else { break };
            let name = &cfg.models[active.remove(k)];
            if !env.keep_loaded.contains(name) {
                env.pool
                    .unload(name)
                    .await
                    .map_err(|e| EvalError::Model(e.to_string()))?;
            }
        }
        if !active.is_empty() {
            let names: Vec<&str> = active.iter().map(|&m| cfg.models[m].as_str()).collect();
            env.progress.set_message(format!(
                "model {}/{}: {}",
                next_model,
                n_models,
                names.join(", ")
            ));
        }

        // Per active model, one batch with every ready model turn.
        for &m in &active {
            if model_busy[m] {
                continue;
            }
            let mut slots = Vec::new();
            let mut reqs = Vec::new();
            for (i, c) in convs.iter_mut().enumerate() {
                if c.model == m && c.state == State::NeedModel && !c.busy {
                    c.busy = true;
                    slots.push(Slot::Conv(i));
                    reqs.push(GenRequest {
                        messages: c.rec.messages.clone(),
                        params: cfg.generation.clone(),
                    });
                }
            }
            for (i, (_, r)) in tms.iter().enumerate() {
                if r.model == cfg.models[m] && !tm_started[i] {
                    tm_started[i] = true;
                    slots.push(Slot::Turn(i));
                    reqs.push(GenRequest {
                        messages: r.history.clone(),
                        params: cfg.generation.clone(),
                    });
                }
            }
            if !reqs.is_empty() {
                model_busy[m] = true;
                let model = cfg.models[m].clone();
                let pool = env.pool.as_ref();
                futs.push(Box::pin(async move {
                    let outs = calls.generate(pool, &model, reqs).await;
                    Event::Model(m, slots.into_iter().zip(outs).collect())
                }));
            }
        }

        // Patient replies.
        for (i, c) in convs.iter_mut().enumerate() {
            if c.state == State::NeedPatient && !c.busy {
                c.busy = true;
                let s = &scenarios[c.scenario];
                let messages = c.rec.messages.clone();
                let already = c.rec.disclosed.clone();
                futs.push(Box::pin(async move {
                    Event::Patient(
                        i,
                        patient::reply(calls, sim, s, &messages, &already, seed).await,
                    )
                }));
            }
        }

        let Some(ev) = futs.next().await else {
            if active.is_empty() && next_model >= n_models {
                break;
            }
            // Nothing in flight but a model is not done: cannot happen; fail loudly.
            let names: Vec<&str> = active.iter().map(|&m| cfg.models[m].as_str()).collect();
            return Err(EvalError::Model(format!(
                "the evaluation of {} stalled",
                names.join(", ")
            )));
        };
        match ev {
            Event::Model(m, items) => {
                model_busy[m] = false;
                for (slot, res) in items {
                    if let Err(CallError::Load(why)) = &res {
                        return Err(EvalError::Model(why.clone()));
                    }
                    match slot {
                        Slot::Conv(i) => {
                            let c = &mut convs[i];
                            c.busy = false;
                            match res {
                                Ok(out) => {
                                    c.rec
                                        .messages
                                        .push(ChatMessage::assistant(out.text.clone()));
                                    let concluded =
                                        cfg.stop_on_conclusion && !asks_question(&out.text);
                                    c.rec.turns.push(TurnRecord {
                                        reply: out.text,
                                        finish_reason: out.finish_reason,
                                        completion_tokens: out.completion_tokens,
                                        verdict: None,
                                        patient: None,
                                    });
                                    if concluded || c.rec.turns.len() >= cfg.max_turns {
                                        c.rec.end = if concluded {
                                            End::Concluded
                                        } else {
                                            End::MaxTurns
                                        };
                                        finish(c, i, cfg, calls, jud, &scenarios, &futs);
                                        env.progress.inc(1);
                                    } else {
                                        c.state = State::NeedPatient;
                                    }
                                }
                                Err(e) => {
                                    calls.fail(
                                        Role::Model,
                                        format!(
                                            "{} turn {} of {}",
                                            c.rec.model,
                                            c.rec.turns.len() + 1,
                                            c.rec.scenario
                                        ),
                                        &e,
                                    );
                                    fail(c, e);
                                    env.progress.inc(2);
                                }
                            }
                        }
                        Slot::Turn(i) => {
                            tm_generated[i] = true;
                            env.progress.inc(1);
                            let (si, r) = &mut tms[i];
                            match res {
                                Ok(out) => {
                                    r.reply = Some(out.text.clone());
                                    let mut messages = r.history.clone();
                                    messages.push(ChatMessage::assistant(out.text));
                                    let s = &scenarios[*si];
                                    let repeats = cfg.judge_repeats;
                                    futs.push(Box::pin(async move {
                                        let v = judge::judge(
                                            calls,
                                            jud,
                                            s,
                                            Target::Turn {
                                                messages: &messages,
                                            },
                                            repeats,
                                            seed,
                                        )
                                        .await;
                                        Event::TurnModeVerdict(i, v)
                                    }));
                                }
                                Err(e) => {
                                    calls.fail(
                                        Role::Model,
                                        format!(
                                            "{} teacher-forced turn {} of {}",
                                            r.model, r.turn, r.scenario
                                        ),
                                        &e,
                                    );
                                    r.error = Some(e.to_string());
                                    env.progress.inc(1);
                                }
                            }
                        }
                    }
                }
            }
            Event::Patient(i, res) => {
                let c = &mut convs[i];
                c.busy = false;
                match res {
                    Ok(turn) => {
                        c.rec.messages.push(ChatMessage::user(turn.reply.clone()));
                        for id in &turn.disclosed {
                            if !c.rec.disclosed.contains(id) {
                                c.rec.disclosed.push(id.clone());
                            }
                        }
                        if let Some(t) = c.rec.turns.last_mut() {
                            t.patient = Some(turn);
                        }
                        c.state = State::NeedModel;
                    }
                    Err(e) => {
                        calls.fail(
                            Role::Simulator,
                            format!(
                                "patient reply {} of {} / {}",
                                c.rec.turns.len(),
                                c.rec.scenario,
                                c.rec.model
                            ),
                            &e,
                        );
                        fail(c, e);
                        env.progress.inc(2);
                    }
                }
            }
            Event::TurnVerdict(i, t, res) => {
                let c = &mut convs[i];
                c.judging -= 1;
                match res {
                    Ok(v) => c.rec.turns[t].verdict = Some(v),
                    Err(e) => calls.fail(
                        Role::Judge,
                        format!(
                            "judge turn {} of {} / {}",
                            t + 1,
                            c.rec.scenario,
                            c.rec.model
                        ),
                        e,
                    ),
                }
            }
            Event::DialogueVerdict(i, res) => {
                let c = &mut convs[i];
                c.judging -= 1;
                env.progress.inc(1);
                match res {
                    Ok(v) => c.rec.verdict = Some(v),
                    Err(e) => calls.fail(
                        Role::Judge,
                        format!("judge dialogue {} / {}", c.rec.scenario, c.rec.model),
                        e,
                    ),
                }
            }
            Event::TurnModeVerdict(i, res) => {
                env.progress.inc(1);
                let r = &mut tms[i].1;
                match res {
                    Ok(v) => r.verdict = Some(v),
                    Err(e) => {
                        calls.fail(
                            Role::Judge,
                            format!(
                                "judge teacher-forced turn {} of {} / {}",
                                r.turn, r.scenario, r.model
                            ),
                            &e,
                        );
                        r.error = Some(e.to_string());
                    }
                }
            }
        }
    }
    drop(futs);
    debug_assert!(convs.iter().all(|c| c.judging == 0));

    let dialogues: Vec<DialogueRecord> = convs.into_iter().map(|c| c.rec).collect();
    let pairs = if cfg.pairwise {
        pairwise(cfg, calls, jud, &scenarios, &dialogues, env).await
    } else {
        Vec::new()
    };
    env.progress.finish_and_clear();
    Ok(RunResults {
        scenarios,
        dialogues,
        turn_mode: tms.into_iter().map(|(_, r)| r).collect(),
        pairs,
        failures: calls.failures(),
        counts: Role::ALL.iter().map(|r| (*r, calls.counts(*r))).collect(),
        simulator: sim.id().to_string(),
        judge: jud.id().to_string(),
    })
}

fn fail(c: &mut Conv, e: CallError) {
    c.state = State::Done;
    c.rec.end = End::Failed;
    c.rec.error = Some(e.to_string());
}

/// A finished dialogue: queue its judging (each turn when asked, and the whole dialogue).
fn finish<'a>(
    c: &mut Conv,
    i: usize,
    cfg: &'a EvalConfig,
    calls: &'a Calls,
    jud: &'a dyn ChatBackend,
    scenarios: &'a [Scenario],
    futs: &FuturesUnordered<BoxFuture<'a, Event>>,
) {
    c.state = State::Done;
    let s = &scenarios[c.scenario];
    let repeats = cfg.judge_repeats;
    let seed = cfg.generation.seed;
    if cfg.judge_turns {
        // The messages up to and including each model turn.
        let assistant_at: Vec<usize> = c
            .rec
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == ChatRole::Assistant)
            .map(|(k, _)| k)
            .collect();
        for (t, &k) in assistant_at.iter().enumerate() {
            let messages = c.rec.messages[..=k].to_vec();
            c.judging += 1;
            futs.push(Box::pin(async move {
                let v = judge::judge(
                    calls,
                    jud,
                    s,
                    Target::Turn {
                        messages: &messages,
                    },
                    repeats,
                    seed,
                )
                .await;
                Event::TurnVerdict(i, t, v)
            }));
        }
    }
    let messages = c.rec.messages.clone();
    c.judging += 1;
    futs.push(Box::pin(async move {
        let v = judge::judge(
            calls,
            jud,
            s,
            Target::Dialogue {
                messages: &messages,
            },
            repeats,
            seed,
        )
        .await;
        Event::DialogueVerdict(i, v)
    }));
}

async fn pairwise(
    cfg: &EvalConfig,
    calls: &Calls,
    jud: &dyn ChatBackend,
    scenarios: &[Scenario],
    dialogues: &[DialogueRecord],
    env: &Env,
) -> Vec<PairRecord> {
    env.progress.set_message("pairwise judging");
    let find = |m: &str, s: &str| {
        dialogues
            .iter()
            .find(|d| d.model == m && d.scenario == s && d.end != End::Failed)
    };
    let mut jobs = Vec::new();
    for (i, a) in cfg.models.iter().enumerate() {
        for b in cfg.models.iter().skip(i + 1) {
            for s in scenarios {
                if let (Some(da), Some(db)) = (find(a, &s.id), find(b, &s.id)) {
                    jobs.push((a.clone(), b.clone(), s, da, db));
                }
            }
        }
    }
    env.progress.inc_length(jobs.len() as u64);
    let seed = cfg.generation.seed;
    let futs = jobs.iter().map(|(a, b, s, da, db)| async move {
        let (ab, ba) = futures_util::future::join(
            judge::compare_pair(calls, jud, s, &da.messages, &db.messages, seed),
            judge::compare_pair(calls, jud, s, &db.messages, &da.messages, seed),
        )
        .await;
        let what = format!("pairwise {a} vs {b} on {}", s.id);
        let ab = ab
            .map_err(|e| calls.fail(Role::Judge, format!("{what} (A first)"), e))
            .ok();
        let ba = ba
            .map_err(|e| calls.fail(Role::Judge, format!("{what} (B first)"), e))
            .ok();
        env.progress.inc(1);
        PairRecord {
            a: a.clone(),
            b: b.clone(),
            scenario: s.id.clone(),
            a_first: ab,
            b_first: ba.map(|x| 1.0 - x),
        }
    });
    futures_util::future::join_all(futs).await
}
