//! Aggregates (per model: means with bootstrap CIs, fact-elicitation rate, turns, red flags; per
//! pair: paired win rates) and the run directory's outputs: transcripts.jsonl, turn_mode.jsonl,
//! scenarios.jsonl, scores.json, calls.json, report.md, report.html, and the terminal table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::calls::{Failure, Role, RoleCounts};
use super::judge::{dimension_keys, RUBRIC};
use super::run::{End, EvalConfig, RunResults};
use super::stats::{bootstrap, mean, outcome, Estimate};
use super::EvalError;

/// The aggregate key for the mean of all dimensions.
pub const OVERALL: &str = "overall";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub model: String,
    pub dialogues: usize,
    /// Dialogues with a dialogue verdict.
    pub scored: usize,
    /// Dialogues lost to a model or simulator failure.
    pub failed: usize,
    /// Dialogue-level scores per dimension and `overall`.
    pub dims: BTreeMap<String, Estimate>,
    /// Per-turn scores (averaged within each dialogue first).
    pub turn_dims: BTreeMap<String, Estimate>,
    /// Teacher-forced turns (averaged within each scenario first).
    pub turn_mode_dims: BTreeMap<String, Estimate>,
    pub fact_rate: Option<Estimate>,
    pub turns_used: Option<Estimate>,
    pub red_flags_total: usize,
    /// Red-flag facts the model got the patient to disclose.
    pub red_flags_elicited: usize,
    /// Red flags the judge says the model caught and acted on.
    pub red_flags_caught: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairSummary {
    pub a: String,
    pub b: String,
    /// Scenarios both models have a dialogue verdict for.
    pub n: usize,
    pub a_wins: usize,
    pub ties: usize,
    pub b_wins: usize,
    /// A's paired win rate on overall dialogue scores (ties count half).
    pub win_rate: Option<Estimate>,
    /// A's share from pairwise judging, both orders averaged.
    pub pairwise: Option<Estimate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub models: Vec<ModelSummary>,
    pub pairs: Vec<PairSummary>,
}

fn seed_for(base: u64, label: &str) -> u64 {
    let h = Sha256::digest(label.as_bytes());
    base ^ u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

fn estimates(
    per_unit: &[BTreeMap<String, f64>],
    resamples: usize,
    seed: u64,
    label: &str,
) -> BTreeMap<String, Estimate> {
    let mut out = BTreeMap::new();
    for k in dimension_keys().chain([OVERALL]) {
        let xs: Vec<f64> = per_unit.iter().filter_map(|u| u.get(k).copied()).collect();
        if let Some(e) = bootstrap(&xs, resamples, seed_for(seed, &format!("{label}/{k}"))) {
            out.insert(k.to_string(), e);
        }
    }
    out
}

fn with_overall(scores: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut m = scores.clone();
    if !scores.is_empty() {
        m.insert(
            OVERALL.into(),
            mean(&scores.values().copied().collect::<Vec<_>>()),
        );
    }
    m
}

/// Mean per key over several score maps.
fn average(maps: &[&BTreeMap<String, f64>]) -> Option<BTreeMap<String, f64>> {
    if maps.is_empty() {
        return None;
    }
    let mut out = BTreeMap::new();
    for k in dimension_keys().chain([OVERALL]) {
        let xs: Vec<f64> = maps.iter().filter_map(|m| m.get(k).copied()).collect();
        if !xs.is_empty() {
            out.insert(k.to_string(), mean(&xs));
        }
    }
    Some(out)
}

pub fn summarise(cfg: &EvalConfig, r: &RunResults) -> Summary {
    let seed = cfg.generation.seed;
    let n = cfg.bootstrap_resamples;
    let mut models = Vec::new();
    for m in &cfg.models {
        let ds: Vec<_> = r.dialogues.iter().filter(|d| &d.model == m).collect();
        let ok: Vec<_> = ds.iter().filter(|d| d.end != End::Failed).collect();
        let dims_units: Vec<_> = ok
            .iter()
            .filter_map(|d| d.verdict.as_ref())
            .map(|v| with_overall(&v.scores))
            .collect();
        let turn_units: Vec<_> = ok
            .iter()
            .filter_map(|d| {
                let ts: Vec<_> = d
                    .turns
                    .iter()
                    .filter_map(|t| t.verdict.as_ref())
                    .map(|v| with_overall(&v.scores))
                    .collect();
                average(&ts.iter().collect::<Vec<_>>())
            })
            .collect();
        let tm_units: Vec<_> = r
            .scenarios
            .iter()
            .filter_map(|s| {
                let ts: Vec<_> = r
                    .turn_mode
                    .iter()
                    .filter(|t| &t.model == m && t.scenario == s.id)
                    .filter_map(|t| t.verdict.as_ref())
                    .map(|v| with_overall(&v.scores))
                    .collect();
                average(&ts.iter().collect::<Vec<_>>())
            })
            .collect();
        let facts: Vec<f64> = ok.iter().map(|d| d.fact_rate()).collect();
        let turns: Vec<f64> = ok.iter().map(|d| d.turns.len() as f64).collect();
        let (mut total, mut elicited, mut caught) = (0, 0, 0);
        for d in &ok {
            if let Some(s) = r.scenarios.iter().find(|s| s.id == d.scenario) {
                for f in s.red_flags() {
                    total += 1;
                    elicited += d.disclosed.contains(&f.id) as usize;
                    caught += d
                        .verdict
                        .as_ref()
                        .and_then(|v| v.red_flags.get(&f.id))
                        .copied()
                        .unwrap_or(false) as usize;
                }
            }
        }
        models.push(ModelSummary {
            model: m.clone(),
            dialogues: ds.len(),
            scored: dims_units.len(),
            failed: ds.len() - ok.len(),
            dims: estimates(&dims_units, n, seed, &format!("{m}/dialogue")),
            turn_dims: estimates(&turn_units, n, seed, &format!("{m}/turn")),
            turn_mode_dims: estimates(&tm_units, n, seed, &format!("{m}/turn_mode")),
            fact_rate: bootstrap(&facts, n, seed_for(seed, &format!("{m}/facts"))),
            turns_used: bootstrap(&turns, n, seed_for(seed, &format!("{m}/turns"))),
            red_flags_total: total,
            red_flags_elicited: elicited,
            red_flags_caught: caught,
        });
    }
    let mut pairs = Vec::new();
    for (i, a) in cfg.models.iter().enumerate() {
        for b in cfg.models.iter().skip(i + 1) {
            let overall = |m: &str, s: &str| {
                r.dialogues
                    .iter()
                    .find(|d| d.model == m && d.scenario == s && d.scored())
                    .and_then(|d| d.verdict.as_ref())
                    .map(|v| v.overall())
            };
            let outcomes: Vec<f64> = r
                .scenarios
                .iter()
                .filter_map(|s| Some(outcome(overall(a, &s.id)?, overall(b, &s.id)?, 1e-9)))
                .collect();
            let shares: Vec<f64> = r
                .pairs
                .iter()
                .filter(|p| &p.a == a && &p.b == b)
                .filter_map(|p| p.a_share())
                .collect();
            pairs.push(PairSummary {
                a: a.clone(),
                b: b.clone(),
                n: outcomes.len(),
                a_wins: outcomes.iter().filter(|x| **x == 1.0).count(),
                ties: outcomes.iter().filter(|x| **x == 0.5).count(),
                b_wins: outcomes.iter().filter(|x| **x == 0.0).count(),
                win_rate: bootstrap(&outcomes, n, seed_for(seed, &format!("{a}/{b}/win"))),
                pairwise: bootstrap(&shares, n, seed_for(seed, &format!("{a}/{b}/pairwise"))),
            });
        }
    }
    Summary { models, pairs }
}

/// scores.json: the summary and every verdict, without counts or times, so an interrupted and
/// resumed run writes the same file as an uninterrupted one.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScoresFile {
    pub simulator: String,
    pub judge: String,
    pub rubric: Vec<String>,
    pub summary: Summary,
    pub dialogues: Vec<serde_json::Value>,
    pub turn_mode: Vec<serde_json::Value>,
    pub pairs: Vec<super::run::PairRecord>,
    pub failures: Vec<Failure>,
}

fn write(path: &Path, text: &str) -> Result<(), EvalError> {
    std::fs::write(path, text).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn jsonl<T: Serialize>(items: &[T]) -> String {
    items
        .iter()
        .map(|x| serde_json::to_string(x).expect("records serialize") + "\n")
        .collect()
}

/// Writes every output file of the run directory.
pub fn write_outputs(
    dir: &Path,
    cfg: &EvalConfig,
    r: &RunResults,
    summary: &Summary,
) -> Result<(), EvalError> {
    write(&dir.join("transcripts.jsonl"), &jsonl(&r.dialogues))?;
    if !r.turn_mode.is_empty() {
        write(&dir.join("turn_mode.jsonl"), &jsonl(&r.turn_mode))?;
    }
    write(&dir.join("scenarios.jsonl"), &jsonl(&r.scenarios))?;
    let dialogues = r
        .dialogues
        .iter()
        .map(|d| {
            serde_json::json!({
                "model": d.model, "scenario": d.scenario, "end": d.end, "error": d.error,
                "turns": d.turns.len(), "disclosed": d.disclosed, "fact_rate": d.fact_rate(),
                "verdict": d.verdict,
                "turn_verdicts": d.turns.iter().map(|t| t.verdict.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let turn_mode = r
        .turn_mode
        .iter()
        .map(|t| serde_json::json!({"model": t.model, "scenario": t.scenario, "turn": t.turn, "verdict": t.verdict, "error": t.error}))
        .collect();
    let scores = ScoresFile {
        simulator: r.simulator.clone(),
        judge: r.judge.clone(),
        rubric: dimension_keys().map(String::from).collect(),
        summary: summary.clone(),
        dialogues,
        turn_mode,
        pairs: r.pairs.clone(),
        failures: r.failures.clone(),
    };
    write(
        &dir.join("scores.json"),
        &serde_json::to_string_pretty(&scores).expect("scores serialize"),
    )?;
    let counts: BTreeMap<&str, &RoleCounts> =
        r.counts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write(
        &dir.join("calls.json"),
        &serde_json::to_string_pretty(&counts).expect("counts serialize"),
    )?;
    write(&dir.join("report.md"), &markdown(cfg, r, summary))?;
    write(&dir.join("report.html"), &html(cfg, r, summary))?;
    Ok(())
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn est(e: Option<&Estimate>) -> String {
    match e {
        Some(e) if e.n > 1 => format!("{:.2} [{:.2}, {:.2}]", e.mean, e.lo, e.hi),
        Some(e) => f2(e.mean),
        None => "-".into(),
    }
}

fn pct(e: Option<&Estimate>) -> String {
    match e {
        Some(e) if e.n > 1 => format!(
            "{:.0}% [{:.0}, {:.0}]",
            100.0 * e.mean,
            100.0 * e.lo,
            100.0 * e.hi
        ),
        Some(e) => format!("{:.0}%", 100.0 * e.mean),
        None => "-".into(),
    }
}

fn failure_counts(r: &RunResults) -> BTreeMap<Role, usize> {
    let mut m = BTreeMap::new();
    for f in &r.failures {
        *m.entry(f.role).or_insert(0) += 1;
    }
    m
}

/// The terminal summary (stdout).
pub fn terminal_table(r: &RunResults, s: &Summary, dir: &Path) -> String {
    let mut out = String::new();
    let name_w = s
        .models
        .iter()
        .map(|m| m.model.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "{:<name_w$}  {:>5}  {:<20} {:>7} {:>7} {:>8} {:>6} {:>7}  {:<6} {:>5}  {:<9} {:>6}",
        "MODEL",
        "N",
        "OVERALL [95% CI]",
        "INQUIRY",
        "CONTEXT",
        "ACCURACY",
        "SAFETY",
        "EMPATHY",
        "FACTS",
        "TURNS",
        "REDFLAGS",
        "FAILED"
    );
    for m in &s.models {
        let d = |k: &str| {
            m.dims
                .get(k)
                .map(|e| f2(e.mean))
                .unwrap_or_else(|| "-".into())
        };
        let _ =
            writeln!(
            out,
            "{:<name_w$}  {:>5}  {:<20} {:>7} {:>7} {:>8} {:>6} {:>7}  {:<6} {:>5}  {:<9} {:>6}",
            m.model,
            format!("{}/{}", m.scored, m.dialogues),
            est(m.dims.get(OVERALL)),
            d("inquiry"),
            d("context_use"),
            d("accuracy"),
            d("safety"),
            d("empathy"),
            m.fact_rate.map(|e| format!("{:.0}%", 100.0 * e.mean)).unwrap_or_else(|| "-".into()),
            m.turns_used.map(|e| format!("{:.1}", e.mean)).unwrap_or_else(|| "-".into()),
            format!("{}/{}", m.red_flags_caught, m.red_flags_total),
            m.failed,
        );
    }
    for m in &s.models {
        if let Some(e) = m.turn_mode_dims.get(OVERALL) {
            let _ = writeln!(
                out,
                "teacher-forced turns, {}: overall {}",
                m.model,
                est(Some(e))
            );
        }
    }
    for p in &s.pairs {
        let _ = writeln!(
            out,
            "{} vs {}: {} wins {} of {} scenarios ({}-{}-{} W-T-L){}",
            p.a,
            p.b,
            p.a,
            pct(p.win_rate.as_ref()),
            p.n,
            p.a_wins,
            p.ties,
            p.b_wins,
            p.pairwise
                .map(|e| format!("; pairwise judge: {}", pct(Some(&e))))
                .unwrap_or_default()
        );
    }
    let fc = failure_counts(r);
    if fc.is_empty() {
        let _ = writeln!(out, "failures: none");
    } else {
        let parts: Vec<String> = fc
            .iter()
            .map(|(k, v)| format!("{} {v}", k.as_str()))
            .collect();
        let _ = writeln!(
            out,
            "failures: {} (details in report.md and scores.json)",
            parts.join(", ")
        );
    }
    let _ = writeln!(out, "results: {}", dir.join("report.html").display());
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(cfg: &EvalConfig, r: &RunResults, s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# IBench consultation comparison\n");
    let _ = writeln!(
        o,
        "Models: {}. Scenarios: {}. Mode: {:?}. Max turns: {}. Simulator: `{}`. Judge: `{}` (repeats: {}).\n",
        cfg.models.join(", "),
        r.scenarios.len(),
        cfg.mode,
        cfg.max_turns,
        r.simulator,
        r.judge,
        cfg.judge_repeats
    );
    let _ = writeln!(
        o,
        "Scores are 1-5 (higher is better), means over scenarios with 95% bootstrap intervals ({} resamples).\n",
        cfg.bootstrap_resamples
    );
    let _ = writeln!(o, "## Dialogue scores\n");
    let head: Vec<&str> = RUBRIC.iter().map(|d| d.name).collect();
    let _ = writeln!(
        o,
        "| Model | Scored | Overall | {} | Facts elicited | Turns | Red flags elicited | Red flags caught | Failed |",
        head.join(" | ")
    );
    let _ = writeln!(o, "|{}", "---|".repeat(8 + head.len()));
    for m in &s.models {
        let dims: Vec<String> = dimension_keys().map(|k| est(m.dims.get(k))).collect();
        let _ = writeln!(
            o,
            "| {} | {}/{} | {} | {} | {} | {} | {}/{} | {}/{} | {} |",
            md_escape(&m.model),
            m.scored,
            m.dialogues,
            est(m.dims.get(OVERALL)),
            dims.join(" | "),
            pct(m.fact_rate.as_ref()),
            est(m.turns_used.as_ref()),
            m.red_flags_elicited,
            m.red_flags_total,
            m.red_flags_caught,
            m.red_flags_total,
            m.failed
        );
    }
    for (title, pick) in [("Per-turn scores", 0), ("Teacher-forced turns", 1)] {
        let rows: Vec<_> = s
            .models
            .iter()
            .map(|m| {
                (
                    m,
                    if pick == 0 {
                        &m.turn_dims
                    } else {
                        &m.turn_mode_dims
                    },
                )
            })
            .filter(|(_, d)| !d.is_empty())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\n## {title}\n");
        let _ = writeln!(o, "| Model | Overall | {} |", head.join(" | "));
        let _ = writeln!(o, "|{}", "---|".repeat(2 + head.len()));
        for (m, d) in rows {
            let dims: Vec<String> = dimension_keys().map(|k| est(d.get(k))).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                md_escape(&m.model),
                est(d.get(OVERALL)),
                dims.join(" | ")
            );
        }
    }
    if !s.pairs.is_empty() {
        let _ = writeln!(o, "\n## Pairs (same scenarios)\n");
        let _ = writeln!(
            o,
            "| A | B | Scenarios | A wins | Ties | B wins | A's paired win rate | A's pairwise-judge share |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for p in &s.pairs {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                md_escape(&p.a),
                md_escape(&p.b),
                p.n,
                p.a_wins,
                p.ties,
                p.b_wins,
                pct(p.win_rate.as_ref()),
                pct(p.pairwise.as_ref())
            );
        }
    }
    let _ = writeln!(o, "\n## Per scenario (overall dialogue score)\n");
    let _ = writeln!(
        o,
        "| Scenario | {} |",
        cfg.models
            .iter()
            .map(|m| md_escape(m))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(o, "|---|{}", "---|".repeat(cfg.models.len()));
    for sc in &r.scenarios {
        let cells: Vec<String> = cfg
            .models
            .iter()
            .map(|m| {
                match r
                    .dialogues
                    .iter()
                    .find(|d| &d.model == m && d.scenario == sc.id)
                {
                    Some(d) if d.end == End::Failed => "failed".into(),
                    Some(d) => match &d.verdict {
                        Some(v) => {
                            format!(
                                "{:.2} ({} turns, {:.0}% facts)",
                                v.overall(),
                                d.turns.len(),
                                100.0 * d.fact_rate()
                            )
                        }
                        None => "not judged".into(),
                    },
                    None => "-".into(),
                }
            })
            .collect();
        let _ = writeln!(o, "| {} | {} |", sc.id, cells.join(" | "));
    }
    let _ = writeln!(o, "\n## Failures\n");
    if r.failures.is_empty() {
        let _ = writeln!(o, "None.");
    } else {
        for f in &r.failures {
            let _ = writeln!(
                o,
                "- **{}** {}: {}",
                f.role.as_str(),
                md_escape(&f.what),
                md_escape(&f.error)
            );
        }
    }
    let _ = writeln!(o, "\n## Calls\n");
    for (role, c) in &r.counts {
        let _ = writeln!(
            o,
            "- {}: {} issued, {} replayed from the store, {} failed steps",
            role.as_str(),
            c.issued,
            c.replayed,
            c.failed
        );
    }
    let _ = writeln!(
        o,
        "\nTranscripts: `transcripts.jsonl`; every verdict with its reasons: `scores.json`."
    );
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
];

/// Grouped bars with error bars: one group per label, one bar per model.
fn bar_chart(
    title: &str,
    labels: &[String],
    models: &[String],
    values: &[Vec<Option<Estimate>>],
    lo: f64,
    hi: f64,
) -> String {
    let (w, h, left, top, bottom) = (760.0, 260.0, 40.0, 28.0, 40.0);
    let plot_h = h - top - bottom;
    let group_w = (w - left - 10.0) / labels.len().max(1) as f64;
    let bar_w = (group_w * 0.8 / models.len().max(1) as f64).min(40.0);
    let y = |v: f64| top + plot_h * (1.0 - ((v - lo) / (hi - lo)).clamp(0.0, 1.0));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\"><text x=\"{left}\" y=\"16\" class=\"t\">{}</text>",
        esc(title),
        esc(title)
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let yy = y(v);
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" class=\"g\"/><text x=\"{}\" y=\"{:.1}\" class=\"a\" text-anchor=\"end\">{}</text>",
            w - 10.0,
            left - 4.0,
            yy + 4.0,
            if hi <= 1.0 { format!("{:.0}%", v * 100.0) } else { format!("{v:.0}") }
        );
    }
    for (gi, label) in labels.iter().enumerate() {
        let gx = left + gi as f64 * group_w + group_w * 0.1;
        for (mi, model) in models.iter().enumerate() {
            let Some(e) = values[gi][mi] else { continue };
            let x = gx + mi as f64 * bar_w;
            let (y0, y1) = (y(e.mean), y(lo));
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {:.2} [{:.2}, {:.2}], n={}</title></rect>",
                bar_w - 2.0,
                (y1 - y0).max(0.0),
                COLORS[mi % COLORS.len()],
                esc(model),
                e.mean,
                e.lo,
                e.hi,
                e.n
            );
            let cx = x + (bar_w - 2.0) / 2.0;
            let (ylo, yhi) = (y(e.lo), y(e.hi));
            let _ = write!(
                s,
                "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{ylo:.1}\" y2=\"{yhi:.1}\" class=\"e\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ylo:.1}\" y2=\"{ylo:.1}\" class=\"e\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{yhi:.1}\" y2=\"{yhi:.1}\" class=\"e\"/>",
                cx - 4.0,
                cx + 4.0,
                cx - 4.0,
                cx + 4.0
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"a\" text-anchor=\"middle\">{}</text>",
            gx + group_w * 0.4,
            h - bottom + 16.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

fn legend(models: &[String]) -> String {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "<span class=\"k\"><i style=\"background:{}\"></i>{}</span>",
                COLORS[i % COLORS.len()],
                esc(m)
            )
        })
        .collect()
}

fn html(cfg: &EvalConfig, r: &RunResults, s: &Summary) -> String {
    let models: Vec<String> = s.models.iter().map(|m| m.model.clone()).collect();
    let labels: Vec<String> = RUBRIC
        .iter()
        .map(|d| d.name.to_string())
        .chain(["Overall".to_string()])
        .collect();
    let keys: Vec<&str> = dimension_keys().chain([OVERALL]).collect();
    let grid =
        |pick: fn(&ModelSummary) -> &BTreeMap<String, Estimate>| -> Vec<Vec<Option<Estimate>>> {
            keys.iter()
                .map(|k| s.models.iter().map(|m| pick(m).get(*k).copied()).collect())
                .collect()
        };
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>IBench consultation comparison</h1><p>Models: {}. Scenarios: {}. Max turns: {}. Simulator: <code>{}</code>. Judge: <code>{}</code>.</p><p>{}</p>",
        esc(&cfg.models.join(", ")),
        r.scenarios.len(),
        cfg.max_turns,
        esc(&r.simulator),
        esc(&r.judge),
        legend(&models)
    );
    body.push_str(&bar_chart(
        "Dialogue scores (1-5), 95% bootstrap CI",
        &labels,
        &models,
        &grid(|m| &m.dims),
        1.0,
        5.0,
    ));
    if s.models.iter().any(|m| !m.turn_dims.is_empty()) {
        body.push_str(&bar_chart(
            "Per-turn scores (1-5)",
            &labels,
            &models,
            &grid(|m| &m.turn_dims),
            1.0,
            5.0,
        ));
    }
    if s.models.iter().any(|m| !m.turn_mode_dims.is_empty()) {
        body.push_str(&bar_chart(
            "Teacher-forced turn scores (1-5)",
            &labels,
            &models,
            &grid(|m| &m.turn_mode_dims),
            1.0,
            5.0,
        ));
    }
    let facts: Vec<Vec<Option<Estimate>>> = vec![s.models.iter().map(|m| m.fact_rate).collect()];
    body.push_str(&bar_chart(
        "Fact-elicitation rate",
        &["facts elicited".to_string()],
        &models,
        &facts,
        0.0,
        1.0,
    ));
    // Tables: the markdown's content, as HTML.
    let _ = write!(
        body,
        "<h2>Summary</h2><table><tr><th>Model</th><th>Scored</th><th>Overall</th>"
    );
    for d in &RUBRIC {
        let _ = write!(body, "<th>{}</th>", esc(d.name));
    }
    let _ = write!(
        body,
        "<th>Facts</th><th>Turns</th><th>Red flags caught</th><th>Failed</th></tr>"
    );
    for m in &s.models {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}/{}</td><td>{}</td>",
            esc(&m.model),
            m.scored,
            m.dialogues,
            est(m.dims.get(OVERALL))
        );
        for k in dimension_keys() {
            let _ = write!(body, "<td>{}</td>", est(m.dims.get(k)));
        }
        let _ = write!(
            body,
            "<td>{}</td><td>{}</td><td>{}/{} (elicited {})</td><td>{}</td></tr>",
            pct(m.fact_rate.as_ref()),
            est(m.turns_used.as_ref()),
            m.red_flags_caught,
            m.red_flags_total,
            m.red_flags_elicited,
            m.failed
        );
    }
    body.push_str("</table>");
    if !s.pairs.is_empty() {
        body.push_str("<h2>Pairs</h2><table><tr><th>A</th><th>B</th><th>n</th><th>W-T-L</th><th>A's paired win rate</th><th>Pairwise judge</th></tr>");
        for p in &s.pairs {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}-{}-{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.a),
                esc(&p.b),
                p.n,
                p.a_wins,
                p.ties,
                p.b_wins,
                pct(p.win_rate.as_ref()),
                pct(p.pairwise.as_ref())
            );
        }
        body.push_str("</table>");
    }
    if !r.failures.is_empty() {
        body.push_str("<h2>Failures</h2><ul>");
        for f in &r.failures {
            let _ = write!(
                body,
                "<li><b>{}</b> {}: {}</li>",
                f.role.as_str(),
                esc(&f.what),
                esc(&f.error)
            );
        }
        body.push_str("</ul>");
    }
    body.push_str("<h2>Dialogues</h2>");
    for d in &r.dialogues {
        let score = d
            .verdict
            .as_ref()
            .map(|v| format!("{:.2}", v.overall()))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            body,
            "<details><summary>{} / {}: overall {}, {} turns, {:.0}% facts, {:?}</summary><div class=\"d\">",
            esc(&d.scenario),
            esc(&d.model),
            score,
            d.turns.len(),
            100.0 * d.fact_rate(),
            d.end
        );
        for m in &d.messages {
            let _ = write!(
                body,
                "<p class=\"{}\"><b>{}</b>: {}</p>",
                m.role.as_str(),
                m.role.as_str(),
                esc(&m.content)
            );
        }
        if let Some(v) = &d.verdict {
            body.push_str("<ul>");
            for (k, x) in &v.scores {
                let _ = write!(
                    body,
                    "<li>{} {:.2}: {}</li>",
                    esc(k),
                    x,
                    esc(v.reasons.get(k).map(String::as_str).unwrap_or(""))
                );
            }
            for (id, c) in &v.red_flags {
                let _ = write!(
                    body,
                    "<li>red flag {}: {}</li>",
                    esc(id),
                    if *c { "caught" } else { "missed" }
                );
            }
            body.push_str("</ul>");
        }
        if let Some(e) = &d.error {
            let _ = write!(body, "<p class=\"err\">failed: {}</p>", esc(e));
        }
        body.push_str("</div></details>");
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>IBench report</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}\
         svg{{display:block;margin:1em 0}}.t{{font-size:14px;font-weight:bold}}.a{{font-size:11px;fill:#555}}\
         .g{{stroke:#ddd}}.e{{stroke:#222;stroke-width:1.2}}.k{{margin-right:1em}}.k i{{display:inline-block;width:12px;height:12px;margin-right:4px}}\
         details{{margin:.3em 0}}.d{{border-left:3px solid #ddd;padding-left:1em}}.user{{color:#555}}.system{{color:#999}}.err{{color:#b00}}\
         </style></head><body>{body}</body></html>\n"
    )
}
