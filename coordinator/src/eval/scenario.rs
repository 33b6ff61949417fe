//! Consultation scenarios: an opening line and the hidden profile the simulated patient draws on.
//!
//! The format (one JSON object per line, see docs/evaluation.md) is the same for the built-in set,
//! for user files and for profiles the simulator invents from `--prompts`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EvalError;

/// The built-in set, authored for IBench: 40 scenarios, half Chinese and half English, half medical
/// and half psychological, 17 of them with a red flag.
pub const BUILTIN_JSONL: &str = include_str!("../../scenarios/builtin.jsonl");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Zh,
    En,
}

impl Language {
    /// Chinese when the text has any CJK ideograph, English otherwise.
    pub fn detect(text: &str) -> Self {
        if text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)) {
            Self::Zh
        } else {
            Self::En
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zh => "zh",
            Self::En => "en",
        }
    }
    /// The language's name as prompts say it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zh => "Chinese",
            Self::En => "English",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Medical,
    Psychological,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Medical => "medical",
            Self::Psychological => "psychological",
        }
    }
}

/// One thing the patient knows and tells only when asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// Unique within the scenario, e.g. `duration`, `medication`, `red_flag`.
    pub id: String,
    /// What the patient says when asked, in the first person and the scenario's language.
    pub text: String,
    /// A question a good consultant would ask to learn this fact.
    pub question: String,
    /// A finding that must be caught and acted on (urgent care, crisis support).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub red_flag: bool,
}

/// What the simulated patient knows and how it behaves; the model under test never sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub persona: String,
    pub facts: Vec<Fact>,
    /// What a good consultant would do: the judge's reference.
    #[serde(default)]
    pub expected: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub id: String,
    pub language: Language,
    pub domain: Domain,
    /// The patient's first message.
    pub opening: String,
    pub profile: Profile,
}

impl Scenario {
    pub fn red_flags(&self) -> impl Iterator<Item = &Fact> {
        self.profile.facts.iter().filter(|f| f.red_flag)
    }

    pub fn fact(&self, id: &str) -> Option<&Fact> {
        self.profile.facts.iter().find(|f| f.id == id)
    }

    /// Checks what the rest of the evaluation relies on; the error names the scenario and field.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |why: String| Err(format!("scenario '{}': {why}", self.id));
        if self.id.trim().is_empty() {
            return Err("a scenario has an empty id".into());
        }
        if self.opening.trim().is_empty() {
            return bad("empty opening".into());
        }
        if self.profile.facts.is_empty() {
            return bad("the profile has no facts".into());
        }
        let mut seen = BTreeSet::new();
        for f in &self.profile.facts {
            if f.id.trim().is_empty() || f.text.trim().is_empty() {
                return bad("a fact has an empty id or text".into());
            }
            if !seen.insert(f.id.as_str()) {
                return bad(format!("fact id '{}' appears twice", f.id));
            }
        }
        Ok(())
    }
}

/// Parses scenarios from JSON Lines (blank lines and lines starting with `#` or `//` are skipped)
/// or from one JSON array. `origin` names the source in errors.
pub fn parse_scenarios(text: &str, origin: &str) -> Result<Vec<Scenario>, EvalError> {
    let trimmed = text.trim_start();
    let scenarios: Vec<Scenario> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|e| {
            EvalError::Scenarios(format!("{origin}: not a JSON array of scenarios: {e}"))
        })?
    } else {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with("//") {
                continue;
            }
            out.push(
                serde_json::from_str(l)
                    .map_err(|e| EvalError::Scenarios(format!("{origin} line {}: {e}", n + 1)))?,
            );
        }
        out
    };
    check_set(&scenarios).map_err(|e| EvalError::Scenarios(format!("{origin}: {e}")))?;
    Ok(scenarios)
}

/// Every scenario valid and ids unique.
pub fn check_set(scenarios: &[Scenario]) -> Result<(), String> {
    let mut ids = BTreeSet::new();
    for s in scenarios {
        s.validate()?;
        if !ids.insert(s.id.as_str()) {
            return Err(format!("scenario id '{}' appears twice", s.id));
        }
    }
    Ok(())
}

/// The built-in set.
pub fn builtin() -> Vec<Scenario> {
    parse_scenarios(BUILTIN_JSONL, "built-in scenarios")
        .expect("the built-in scenario set is valid (tested)")
}

/// `builtin` or a file path.
pub fn load(source: &str) -> Result<Vec<Scenario>, EvalError> {
    if source == "builtin" {
        return Ok(builtin());
    }
    let path = Path::new(source);
    let text = std::fs::read_to_string(path).map_err(|e| {
        EvalError::Scenarios(format!("cannot read scenario file {}: {e}", path.display()))
    })?;
    parse_scenarios(&text, &path.display().to_string())
}

/// Which scenarios of a set to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Only these ids (in this order); empty means all.
    pub ids: Vec<String>,
    pub language: Option<Language>,
    pub domain: Option<Domain>,
    /// At most this many, after the other filters.
    pub limit: Option<usize>,
}

impl Selection {
    pub fn apply(&self, all: Vec<Scenario>) -> Result<Vec<Scenario>, EvalError> {
        let mut picked: Vec<Scenario> = if self.ids.is_empty() {
            all
        } else {
            let mut out = Vec::new();
            for id in &self.ids {
                match all.iter().find(|s| &s.id == id) {
                    Some(s) => out.push(s.clone()),
                    None => {
                        let known: Vec<_> = all.iter().map(|s| s.id.as_str()).collect();
                        return Err(EvalError::Scenarios(format!(
                            "no scenario '{id}' in the set; known ids: {}",
                            known.join(", ")
                        )));
                    }
                }
            }
            out
        };
        picked.retain(|s| {
            self.language.is_none_or(|l| s.language == l)
                && self.domain.is_none_or(|d| s.domain == d)
        });
        if let Some(n) = self.limit {
            picked.truncate(n);
        }
        if picked.is_empty() {
            return Err(EvalError::Scenarios(
                "the selection left no scenario to run".into(),
            ));
        }
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_set_is_balanced_and_holds_the_seed_openings() {
        let all = builtin();
        assert!(all.len() >= 40, "{}", all.len());
        let count = |l: Language, d: Domain| {
            all.iter()
                .filter(|s| s.language == l && s.domain == d)
                .count()
        };
        for l in [Language::Zh, Language::En] {
            for d in [Domain::Medical, Domain::Psychological] {
                assert_eq!(count(l, d), all.len() / 4, "{l:?} {d:?}");
            }
        }
        for opening in ["我最近总是失眠", "我头疼"] {
            assert!(all.iter().any(|s| s.opening == opening), "{opening}");
        }
        let flagged: Vec<_> = all
            .iter()
            .filter(|s| s.red_flags().next().is_some())
            .collect();
        assert!(flagged.len() >= 10);
        assert!(flagged.iter().any(|s| s.id == "en-med-chest-pain"));
        assert!(flagged.iter().any(|s| s.id == "zh-psy-depressed"));
        for s in &all {
            assert_eq!(Language::detect(&s.opening), s.language, "{}", s.id);
            assert!(
                s.profile.facts.iter().all(|f| !f.question.is_empty()),
                "{}",
                s.id
            );
        }
    }

    #[test]
    fn jsonl_and_arrays_parse_and_errors_name_the_line() {
        let one = serde_json::to_string(&builtin()[0]).unwrap();
        let text = format!("# comment\n\n{one}\n");
        assert_eq!(parse_scenarios(&text, "f").unwrap().len(), 1);
        assert_eq!(parse_scenarios(&format!("[{one}]"), "f").unwrap().len(), 1);
        let e = parse_scenarios(&format!("{one}\n{{\"id\": 3}}\n"), "my.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.contains("my.jsonl line 2"), "{e}");
        let e = parse_scenarios(&format!("{one}\n{one}\n"), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn selection_by_ids_filters_and_limit() {
        let all = builtin();
        let s = Selection {
            ids: vec!["zh-med-headache".into(), "en-med-chest-pain".into()],
            ..Default::default()
        };
        let got = s.apply(all.clone()).unwrap();
        assert_eq!(
            got.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["zh-med-headache", "en-med-chest-pain"]
        );
        let s = Selection {
            language: Some(Language::En),
            domain: Some(Domain::Psychological),
            limit: Some(3),
            ..Default::default()
        };
        let got = s.apply(all.clone()).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|s| s.language == Language::En && s.domain == Domain::Psychological));
        let e = Selection {
            ids: vec!["nope".into()],
            ..Default::default()
        }
        .apply(all)
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope") && e.contains("zh-med-headache"), "{e}");
    }
}
