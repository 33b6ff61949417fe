//! End to end with real local models: smollm2-135m-instruct and qwen2.5-coder-0.5b-instruct
//! compared on built-in scenarios, with the embedded default simulator and judge
//! (local:qwen2.5-coder-0.5b-instruct), as a user runs it without an API key.
//!
//! The models come from `ibench fetch-model NAME`. Missing models fail the test, unless
//! IBENCH_SKIP_REAL_MODELS=1.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const MODELS: [&str; 2] = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];

fn registry() -> ibench_shared::Registry {
    let file = std::env::var_os("IBENCH_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(ibench_shared::registry::default_registry_path);
    let root = std::env::var_os("IBENCH_MODELS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| ibench_shared::registry::DEFAULT_MODELS_ROOT.into());
    ibench_shared::Registry::load(&file, &root).expect("the model registry loads")
}

#[test]
fn two_real_local_models_are_compared_with_the_local_simulator_and_judge() {
    let reg = registry();
    let missing: Vec<&str> = MODELS
        .iter()
        .copied()
        .filter(|m| {
            !reg.get(m)
                .is_some_and(|s| s.path.join("config.json").is_file())
        })
        .collect();
    if !missing.is_empty() {
        if std::env::var("IBENCH_SKIP_REAL_MODELS").as_deref() == Ok("1") {
            eprintln!(
                "skipped: real models not registered ({}); IBENCH_SKIP_REAL_MODELS=1",
                missing.join(", ")
            );
            return;
        }
        panic!(
            "the real models {} are not registered: run `ibench fetch-model NAME` for each (or set IBENCH_SKIP_REAL_MODELS=1 to skip)",
            missing.join(", ")
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_ibench"))
        .args(["compare", "--models"])
        .args(MODELS)
        .args([
            "--scenario-ids",
            "en-med-chest-pain,zh-psy-insomnia",
            "--max-turns",
            "2",
            "--max-new-tokens",
            "40",
        ])
        .args(["--no-early-stop", "--bootstrap", "500", "--out"])
        .arg(&out)
        .env_remove("DASHSCOPE_API_KEY")
        .env_remove("IBENCH_API_BASE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "ibench compare failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{stdout}");

    let scores: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    assert!(
        scores["simulator"]
            .as_str()
            .unwrap()
            .starts_with("local:qwen2.5-coder-0.5b-instruct"),
        "{}",
        scores["simulator"]
    );
    assert!(scores["judge"]
        .as_str()
        .unwrap()
        .starts_with("local:qwen2.5-coder-0.5b-instruct"));
    assert_eq!(
        scores["failures"].as_array().unwrap().len(),
        0,
        "{}",
        scores["failures"]
    );
    let dialogues = scores["dialogues"].as_array().unwrap();
    assert_eq!(dialogues.len(), 4);
    for d in dialogues {
        assert_eq!(d["turns"], 2, "{d}");
        let v = &d["verdict"];
        for k in ["inquiry", "context_use", "accuracy", "safety", "empathy"] {
            let x = v["scores"][k].as_f64().unwrap();
            assert!((1.0..=5.0).contains(&x), "{k} = {x}");
        }
        assert_eq!(v["method"], "local-logprob");
    }
    let chest: Vec<&Value> = dialogues
        .iter()
        .filter(|d| d["scenario"] == "en-med-chest-pain")
        .collect();
    assert!(chest
        .iter()
        .all(|d| d["verdict"]["red_flags"]["red_flag"].is_boolean()));
    let summary = &scores["summary"];
    assert_eq!(summary["models"].as_array().unwrap().len(), 2);
    assert_eq!(summary["pairs"][0]["n"], 2);
    for line in std::fs::read_to_string(out.join("transcripts.jsonl"))
        .unwrap()
        .lines()
    {
        let t: Value = serde_json::from_str(line).unwrap();
        assert!(
            t["turns"].as_array().unwrap().iter().all(|x| !x["reply"]
                .as_str()
                .unwrap()
                .trim()
                .is_empty()),
            "{t}"
        );
    }
    for f in [
        "report.md",
        "report.html",
        "calls.json",
        "scenarios.jsonl",
        "store.sqlite",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    for m in MODELS {
        assert!(stdout.contains(m), "the summary table names {m}: {stdout}");
    }
}
