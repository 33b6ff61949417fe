//! The simulated patient: answers only what the consultant asked, from its hidden profile, and
//! reports which fact ids each reply disclosed; and the inventor of profiles for `--prompts`.
//!
//! Two methods, by backend:
//! - an API model (no log-probabilities) answers in JSON: `{"reply": ..., "disclosed": [ids]}`;
//! - a `local:` model is asked, in one forward pass, for every fact not yet disclosed, whether the
//!   consultant's last message asks for it, read as P(Yes) from next-token log-probabilities and
//!   compared with the same questions after a neutral greeting (calibration: tiny models lean to
//!   one answer). A fact is disclosed when P(Yes) rises by [`LIFT_MIN`] or when the message holds
//!   [`LEXICAL_MIN`] of its question's words; at most [`MAX_FACTS_PER_TURN`], the likeliest. The
//!   reply is those facts' authored first-person texts. Deterministic, and the disclosure is
//!   exactly what the reply says.

use ibench_shared::{ChatMessage, Role as ChatRole};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backend::{CallError, ChatBackend, ChatRequest, Slot, SlotsRequest};
use super::calls::{Calls, Role};
use super::parse::{extract_json, string_list};
use super::scenario::{Domain, Fact, Language, Profile, Scenario};

/// The local method discloses at most this many facts per reply.
pub const MAX_FACTS_PER_TURN: usize = 2;
/// Re-asks when an API model's JSON cannot be read.
pub const PARSE_ATTEMPTS: u32 = 3;

/// One patient reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientTurn {
    pub reply: String,
    /// Fact ids this reply disclosed (ids of the profile only).
    pub disclosed: Vec<String>,
    /// `llm-json` or `local-logprob`.
    pub method: String,
}

/// The dialogue as a transcript: `Patient:` / `Consultant:` lines (system messages left out).
pub fn transcript(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .filter(|m| m.role != ChatRole::System)
        .map(|m| {
            format!(
                "{}: {}",
                if m.role == ChatRole::User {
                    "Patient"
                } else {
                    "Consultant"
                },
                m.content.trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn facts_block(facts: &[Fact]) -> String {
    facts
        .iter()
        .map(|f| {
            format!(
                "- {}: {}{}",
                f.id,
                f.text,
                if f.red_flag { " (warning sign)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn not_sure(lang: Language) -> &'static str {
    match lang {
        Language::Zh => "这个我不太清楚。",
        Language::En => "I'm not sure about that.",
    }
}

/// The patient's next reply to the dialogue so far (`messages` as the model under test sees them;
/// the last one is the consultant's).
pub async fn reply(
    calls: &Calls,
    backend: &dyn ChatBackend,
    scenario: &Scenario,
    messages: &[ChatMessage],
    already: &[String],
    seed: u64,
) -> Result<PatientTurn, CallError> {
    if backend.supports_choices() {
        local_reply(calls, backend, scenario, messages, already).await
    } else {
        json_reply(calls, backend, scenario, messages, seed).await
    }
}

async fn json_reply(
    calls: &Calls,
    backend: &dyn ChatBackend,
    s: &Scenario,
    messages: &[ChatMessage],
    seed: u64,
) -> Result<PatientTurn, CallError> {
    let system = format!(
        "You are a SIMULATED PATIENT in a {domain} consultation. Speak {lang} only.\n\
         Persona: {persona}\n\
         Facts you know about yourself (id: fact):\n{facts}\n\n\
         Rules:\n\
         1. Answer only what the consultant asked in their last message, using only these facts. Do not volunteer other facts.\n\
         2. If asked something the facts do not cover, say briefly that you are not sure, in character.\n\
         3. Reply naturally in 1-3 sentences. Never mention fact ids or these rules in the reply.\n\
         4. Output JSON only: {{\"reply\": \"<what you say>\", \"disclosed\": [\"<ids of the facts your reply reveals>\"]}}",
        domain = s.domain.as_str(),
        lang = s.language.name(),
        persona = s.profile.persona,
        facts = facts_block(&s.profile.facts),
    );
    let user = format!(
        "The conversation so far:\n{}\n\nWrite the patient's reply to the consultant's last message as JSON.",
        transcript(messages)
    );
    let mut last = String::new();
    for attempt in 0..PARSE_ATTEMPTS {
        let req = ChatRequest {
            messages: vec![
                ChatMessage::system(system.clone()),
                ChatMessage::user(user.clone()),
            ],
            max_tokens: 400,
            temperature: 0.0,
            seed: seed + attempt as u64,
        };
        let text = calls
            .chat_one(Role::Simulator, "patient", backend, req)
            .await?;
        if let Some(turn) = read_patient_json(&text, s) {
            return Ok(turn);
        }
        last = text;
    }
    Err(CallError::Unparseable {
        attempts: PARSE_ATTEMPTS,
        snippet: last.chars().take(160).collect(),
    })
}

/// `{"reply": "...", "disclosed": [...]}`; unknown ids are dropped.
pub fn read_patient_json(text: &str, s: &Scenario) -> Option<PatientTurn> {
    let v = extract_json(text)?;
    let reply = v
        .get("reply")
        .or_else(|| v.get("response"))
        .and_then(Value::as_str)?
        .trim()
        .to_string();
    if reply.is_empty() {
        return None;
    }
    let ids = v
        .get("disclosed")
        .or_else(|| v.get("disclosed_facts"))
        .map(string_list)
        .unwrap_or_default();
    let mut disclosed: Vec<String> = Vec::new();
    for id in ids {
        if s.fact(&id).is_some() && !disclosed.contains(&id) {
            disclosed.push(id);
        }
    }
    Some(PatientTurn {
        reply,
        disclosed,
        method: "llm-json".into(),
    })
}

async fn local_reply(
    calls: &Calls,
    backend: &dyn ChatBackend,
    s: &Scenario,
    messages: &[ChatMessage],
    already: &[String],
) -> Result<PatientTurn, CallError> {
    let last = messages
        .iter()
        .rev()
        .find(|m| m.role == ChatRole::Assistant)
        .map(|m| m.content.as_str())
        .unwrap_or("");
    let candidates: Vec<&Fact> = s
        .profile
        .facts
        .iter()
        .filter(|f| !already.contains(&f.id))
        .collect();
    let mut chosen: Vec<&Fact> = Vec::new();
    if !candidates.is_empty() {
        // The same questions after a neutral greeting: the model's bias towards Yes or No.
        let neutral = match s.language {
            Language::Zh => "你好，请问有什么可以帮你？",
            Language::En => "Hello, how can I help you?",
        };
        let reqs = vec![
            asked_request(last, &candidates),
            asked_request(neutral, &candidates),
        ];
        let mut res = calls
            .choose(Role::Simulator, "patient-facts", backend, reqs)
            .await
            .into_iter();
        let (asked, base) = (res.next().expect("two")?, res.next().expect("two")?);
        let mut scored: Vec<(f64, &Fact)> = Vec::new();
        for (k, f) in candidates.iter().enumerate() {
            let lift = asked[k][0] - base[k][0];
            let lexical = lexical_overlap(&f.question, last);
            if lift >= LIFT_MIN || lexical >= LEXICAL_MIN {
                scored.push((lift + lexical, f));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(MAX_FACTS_PER_TURN);
        // Keep the profile's order in the reply.
        chosen = s
            .profile
            .facts
            .iter()
            .filter(|f| scored.iter().any(|(_, c)| c.id == f.id))
            .collect();
    }
    let sep = if s.language == Language::Zh { "" } else { " " };
    let reply = if chosen.is_empty() {
        not_sure(s.language).to_string()
    } else {
        chosen
            .iter()
            .map(|f| f.text.trim())
            .collect::<Vec<_>>()
            .join(sep)
    };
    Ok(PatientTurn {
        reply,
        disclosed: chosen.iter().map(|f| f.id.clone()).collect(),
        method: "local-logprob".into(),
    })
}

/// A fact is disclosed when P(Yes) rises at least this much over the neutral greeting's...
pub const LIFT_MIN: f64 = 0.15;
/// ...or when at least this share of its question's words (Chinese: character pairs) are in the
/// consultant's message.
pub const LEXICAL_MIN: f64 = 0.5;

/// One pass: "does the message ask question k?" for every candidate fact, read as P(Yes) per line.
fn asked_request(message: &str, candidates: &[&Fact]) -> SlotsRequest {
    let list = candidates
        .iter()
        .enumerate()
        .map(|(k, f)| {
            format!(
                "{}. {} (the patient's answer would be: {})",
                k + 1,
                f.question,
                f.text
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let user = format!(
        "The consultant said to the patient:\n\"\"\"\n{}\n\"\"\"\n\nFor each numbered question below, answer Yes if the consultant's message asks it (or asks for the given answer), otherwise No.\n{list}\n\nAnswer every number with Yes or No, one per line.",
        message.trim()
    );
    SlotsRequest {
        messages: vec![
            ChatMessage::system("You check what a consultant asked a patient."),
            ChatMessage::user(user),
        ],
        slots: (0..candidates.len())
            .map(|k| Slot {
                prefix: if k == 0 {
                    "1.".into()
                } else {
                    format!("\n{}.", k + 1)
                },
                choices: vec!["Yes".into(), "No".into()],
                fill: " No".into(),
            })
            .collect(),
    }
}

const STOP_WORDS: [&str; 24] = [
    "have", "what", "your", "does", "with", "been", "this", "that", "were", "they", "them", "from",
    "into", "which", "there", "about", "would", "could", "should", "doing", "anything", "like",
    "such", "other",
];

fn terms(text: &str) -> std::collections::BTreeSet<String> {
    if Language::detect(text) == Language::Zh {
        let cjk: Vec<char> = text
            .chars()
            .filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c))
            .collect();
        cjk.windows(2).map(|w| w.iter().collect()).collect()
    } else {
        text.split(|c: char| !c.is_ascii_alphabetic())
            .map(|w| w.to_lowercase())
            .filter(|w| w.len() >= 4 && !STOP_WORDS.contains(&w.as_str()))
            .collect()
    }
}

/// The share of the question's terms that appear in the message.
pub fn lexical_overlap(question: &str, message: &str) -> f64 {
    let q = terms(question);
    if q.is_empty() {
        return 0.0;
    }
    let m = terms(message);
    q.intersection(&m).count() as f64 / q.len() as f64
}

/// Fact slots a local inventor fills, with their questions in both languages.
const SLOTS: [(&str, &str, &str); 5] = [
    (
        "duration",
        "How long has this been going on?",
        "这种情况持续多久了？",
    ),
    (
        "severity",
        "How bad is it, and how much does it affect your daily life?",
        "有多严重？对日常生活影响大吗？",
    ),
    (
        "triggers",
        "Does anything make it better or worse, or did anything set it off?",
        "有什么会让它加重或缓解吗？最近有什么诱因吗？",
    ),
    (
        "medication",
        "Have you taken any medicine or tried anything for it?",
        "有没有吃过什么药或者试过什么办法？",
    ),
    (
        "history",
        "Have you had anything like this before, or other health problems?",
        "以前有过类似情况或者其他疾病吗？",
    ),
];

/// The scenario id of the `n`-th `--prompts` opening.
pub fn prompt_scenario_id(n: usize, opening: &str) -> String {
    format!(
        "prompt-{}-{}",
        n + 1,
        &super::store::short_hash(&opening)[..6]
    )
}

/// Invents a consistent hidden profile for an opening line. The calls are stored, so a rerun
/// into the same run directory gets the same profile.
pub async fn invent(
    calls: &Calls,
    backend: &dyn ChatBackend,
    n: usize,
    opening: &str,
    seed: u64,
) -> Result<Scenario, CallError> {
    let language = Language::detect(opening);
    let id = prompt_scenario_id(n, opening);
    if backend.supports_choices() {
        return invent_local(calls, backend, id, language, opening, seed).await;
    }
    let prompt = format!(
        "Invent the hidden profile of a SIMULATED PATIENT who opened a consultation with: \"{opening}\".\n\
         Write every text in {lang}. Output JSON only, with these keys:\n\
         {{\"domain\": \"medical\" or \"psychological\",\n \"persona\": \"age, occupation, how they talk\",\n \
         \"facts\": [{{\"id\": \"duration\", \"text\": \"what the patient says when asked, first person\", \"question\": \"a question a good consultant would ask to learn it\", \"red_flag\": false}}, ...],\n \
         \"expected\": [\"what a good consultant would do\", ...]}}\n\
         Give 5 or 6 facts with ids among duration, severity, triggers, medication, history, lifestyle, mood, red_flag. \
         The facts must be consistent with each other and with the opening. Include at most one red_flag fact (a warning sign needing urgent care) only if plausible.",
        lang = language.name()
    );
    let mut last = String::new();
    for attempt in 0..PARSE_ATTEMPTS {
        let req = ChatRequest {
            messages: vec![
                ChatMessage::system(
                    "You write realistic, consistent patient cases for evaluating consultants.",
                ),
                ChatMessage::user(prompt.clone()),
            ],
            max_tokens: 1200,
            temperature: 0.0,
            seed: seed + attempt as u64,
        };
        let text = calls
            .chat_one(Role::Simulator, "profile", backend, req)
            .await?;
        if let Some(s) = read_profile_json(&text, &id, language, opening) {
            return Ok(s);
        }
        last = text;
    }
    Err(CallError::Unparseable {
        attempts: PARSE_ATTEMPTS,
        snippet: last.chars().take(160).collect(),
    })
}

fn read_profile_json(text: &str, id: &str, language: Language, opening: &str) -> Option<Scenario> {
    let v = extract_json(text)?;
    let domain = match v
        .get("domain")
        .and_then(Value::as_str)
        .unwrap_or("medical")
        .to_lowercase()
    {
        d if d.starts_with("psych") || d.contains("心理") => Domain::Psychological,
        _ => Domain::Medical,
    };
    let mut facts: Vec<Fact> = Vec::new();
    for f in v.get("facts")?.as_array()? {
        let fid = f
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        let text = f
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        if fid.is_empty() || text.is_empty() || facts.iter().any(|x| x.id == fid) {
            continue;
        }
        let question = f
            .get("question")
            .and_then(Value::as_str)
            .unwrap_or(&text)
            .trim()
            .to_string();
        let red_flag = f
            .get("red_flag")
            .and_then(super::parse::bool_value)
            .unwrap_or(fid.contains("red_flag"));
        facts.push(Fact {
            id: fid,
            text,
            question,
            red_flag,
        });
    }
    let s = Scenario {
        id: id.to_string(),
        language,
        domain,
        opening: opening.to_string(),
        profile: Profile {
            persona: v
                .get("persona")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            facts,
            expected: v.get("expected").map(string_list).unwrap_or_default(),
        },
    };
    s.validate().ok().map(|_| s)
}

async fn invent_local(
    calls: &Calls,
    backend: &dyn ChatBackend,
    id: String,
    language: Language,
    opening: &str,
    seed: u64,
) -> Result<Scenario, CallError> {
    let domain_req = SlotsRequest::single(
        vec![ChatMessage::user(format!(
            "A person says: \"{opening}\"\nIs this mainly a medical (body) concern or a psychological (mind, emotions, relationships) concern?\nAnswer A for medical or B for psychological."
        ))],
        "Answer:",
        &["A", "B"],
    );
    let p = calls
        .choose(Role::Simulator, "profile-domain", backend, vec![domain_req])
        .await
        .pop()
        .expect("one")?;
    let p = &p[0];
    let domain = if p[1] > p[0] {
        Domain::Psychological
    } else {
        Domain::Medical
    };
    let reqs: Vec<ChatRequest> = SLOTS
        .iter()
        .map(|(_, en, zh)| {
            let q = if language == Language::Zh { zh } else { en };
            ChatRequest {
                messages: vec![
                    ChatMessage::system("You write realistic patient cases."),
                    ChatMessage::user(format!(
                        "A patient started a {} consultation by saying: \"{opening}\"\nInvent the patient's short, realistic answer to the question \"{q}\". \
                         Write only the answer, in the first person, in {}, in one sentence.",
                        domain.as_str(),
                        language.name()
                    )),
                ],
                max_tokens: 48,
                temperature: 0.0,
                seed,
            }
        })
        .collect();
    let answers = calls
        .chat(Role::Simulator, "profile-fact", backend, reqs)
        .await;
    let mut facts = Vec::new();
    for ((slot, en, zh), a) in SLOTS.iter().zip(answers) {
        let text = first_line(&a?);
        let text = if text.is_empty() {
            not_sure(language).to_string()
        } else {
            text
        };
        let question = if language == Language::Zh { zh } else { en };
        facts.push(Fact {
            id: slot.to_string(),
            text,
            question: question.to_string(),
            red_flag: false,
        });
    }
    let (persona, expected) = match language {
        Language::Zh => (
            "一位成年患者，说话简短，只回答被问到的问题。",
            vec![
                "先询问持续时间、严重程度、诱因、用药和既往史，再给出建议".to_string(),
                "必要时建议就医或寻求专业帮助".to_string(),
            ],
        ),
        Language::En => (
            "An adult patient who talks briefly and answers only what is asked.",
            vec![
                "Ask about duration, severity, triggers, medication and history before advising"
                    .to_string(),
                "Refer to a professional when needed".to_string(),
            ],
        ),
    };
    Ok(Scenario {
        id,
        language,
        domain,
        opening: opening.to_string(),
        profile: Profile {
            persona: persona.to_string(),
            facts,
            expected,
        },
    })
}

/// The first non-empty line, without surrounding quotes, at most 200 characters.
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = line.trim_matches(|c: char| {
        c == '"' || c == '“' || c == '”' || c == '\'' || c == '「' || c == '」'
    });
    line.chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::scenario::builtin;

    #[test]
    fn patient_json_keeps_known_ids_only() {
        let s = builtin()
            .into_iter()
            .find(|s| s.id == "zh-med-headache")
            .unwrap();
        let t = read_patient_json(
            "```json\n{\"reply\": \"两天了\", \"disclosed\": [\"duration\", \"made_up\", \"duration\"]}\n```",
            &s,
        )
        .unwrap();
        assert_eq!(t.reply, "两天了");
        assert_eq!(t.disclosed, vec!["duration"]);
        assert!(read_patient_json("{\"reply\": \"\"}", &s).is_none());
        assert!(read_patient_json("I am a patient", &s).is_none());
    }

    #[test]
    fn profile_json_is_validated() {
        let text = r#"{"domain": "psychological", "persona": "p", "facts": [
            {"id": "duration", "text": "a month", "question": "how long?"},
            {"id": "red_flag", "text": "dark thoughts", "question": "any thoughts of self-harm?", "red_flag": "yes"}],
            "expected": ["ask about risk"]}"#;
        let s = read_profile_json(text, "prompt-1-abc", Language::En, "I can't sleep").unwrap();
        assert_eq!(s.domain, Domain::Psychological);
        assert_eq!(s.red_flags().count(), 1);
        assert!(read_profile_json(r#"{"facts": []}"#, "x", Language::En, "o").is_none());
    }

    #[test]
    fn lexical_overlap_counts_question_terms() {
        assert!(lexical_overlap("头疼持续多久了？", "你头疼多久了？") >= LEXICAL_MIN);
        assert_eq!(lexical_overlap("头疼持续多久了？", "注意休息。"), 0.0);
        let q = "Does the pain spread anywhere, like your arm, neck or jaw?";
        assert!(lexical_overlap(q, "Does the pain spread to your arm or jaw?") >= LEXICAL_MIN);
        assert!(lexical_overlap(q, "Take some rest.") < LEXICAL_MIN);
    }

    #[test]
    fn transcript_and_first_line() {
        let m = vec![
            ChatMessage::system("s"),
            ChatMessage::user("我头疼"),
            ChatMessage::assistant("多久了？"),
        ];
        assert_eq!(transcript(&m), "Patient: 我头疼\nConsultant: 多久了？");
        assert_eq!(first_line("\n  \"Two days.\"\nmore"), "Two days.");
    }
}
