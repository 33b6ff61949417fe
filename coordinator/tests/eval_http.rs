//! `ibench compare` against a real OpenAI-compatible server on loopback (port 0) that plays the
//! simulated patient and the judge and injects 429s, 500s, timeouts, malformed bodies and
//! unreadable replies. The models under test are the tiny random fixtures (their text is garbage,
//! but deterministic), run by the real `ibench` binary.
//!
//! Synchronisation is by events only: the server's answered-call counter (a watch channel) and the
//! child's JSON log lines ("stored call"); no sleeps.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_failures_counted_and_nothing_is_lost() {
    let mock = Mock::start(Plan::ByArrival, Some("I have some chest pain.")).await;
    let work = tempfile::tempdir().unwrap();
    let models = tiny_models(work.path());
    let out = work.path().join("run");
    let a = args(
        &mock,
        work.path(),
        &models,
        &out,
        &[
            "--scenario-ids",
            "zh-med-headache,en-med-chest-pain",
            "--pairwise",
        ],
    );
    let (stdout, stderr) = run_to_end(&a).await;

    let faults = mock.state.inner.lock().unwrap().faults.clone();
    for f in [
        Fault::TooMany,
        Fault::ServerError,
        Fault::Timeout,
        Fault::MalformedBody,
        Fault::Unreadable,
    ] {
        assert!(
            faults.get(&f).copied().unwrap_or(0) >= 1,
            "fault {f:?} never injected: {faults:?}"
        );
    }
    assert_eq!(
        mock.state.inner.lock().unwrap().bad_auth,
        0,
        "every call carries the key"
    );

    let scores = read_json(out.join("scores.json"));
    let dialogues = scores["dialogues"].as_array().unwrap();
    assert_eq!(dialogues.len(), 4);
    for d in dialogues {
        assert_ne!(d["end"], "failed", "{d}");
        assert_eq!(d["turns"], 2);
        let chest = d["scenario"] == "en-med-chest-pain";
        assert_eq!(
            d["verdict"].is_null(),
            chest,
            "only the always-failing judge calls lack a verdict: {d}"
        );
        // The patient disclosed one real fact (the unknown id is dropped).
        assert_eq!(d["disclosed"].as_array().unwrap().len(), 1, "{d}");
        for t in d["turn_verdicts"].as_array().unwrap() {
            assert!(t["scores"]["inquiry"].as_f64().is_some(), "{t}");
        }
    }
    // Exactly the two always-failing dialogue judgements failed, after every try.
    let failures = scores["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    for f in failures {
        assert_eq!(f["role"], "judge");
        let e = f["error"].as_str().unwrap();
        assert!(
            e.contains("gave up after 4 attempts") && e.contains("HTTP 500"),
            "{e}"
        );
    }
    assert!(stdout.contains("failures: judge 2"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("judge dialogue en-med-chest-pain"), "{md}");
    // Every answered call was stored, once.
    assert_eq!(stored_http_calls(&out) as usize, mock.total_answered());
    assert_eq!(mock.repeated(), 0);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && !html.contains("<script"),
        "offline report with inline charts"
    );
    assert_no_key(work.path(), &[&stdout, &stderr]);

    // Rerunning into the same directory repeats no call.
    let before = mock.state.inner.lock().unwrap().requests;
    let (stdout2, _) = run_to_end(&a).await;
    let after = mock.state.inner.lock().unwrap().requests;
    // Only the two always-failing calls are tried again (failures are not stored).
    assert_eq!(after - before, 2 * 4, "a rerun repeats only failed calls");
    assert_eq!(
        read_json(out.join("scores.json"))["dialogues"],
        scores["dialogues"]
    );
    assert!(stdout2.contains("failures: judge 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_resume_completes_with_equal_results_and_no_repeated_call() {
    let work = tempfile::tempdir().unwrap();
    let models = tiny_models(work.path());
    let extra = [
        "--scenario-ids",
        "zh-psy-insomnia,en-med-chest-pain,en-psy-hopeless",
        "--mode",
        "both",
    ];

    // The uninterrupted reference.
    let ref_mock = Mock::start(Plan::ByHash, None).await;
    let ref_out = work.path().join("reference");
    run_to_end(&args(&ref_mock, work.path(), &models, &ref_out, &extra)).await;
    let total = ref_mock.total_answered();
    assert!(total >= 20, "{total}");

    // Killed once half of the calls are answered and stored.
    let mock = Mock::start(Plan::ByHash, None).await;
    let out = work.path().join("interrupted");
    let half = total / 2;
    *mock.state.hold_after.lock().unwrap() = Some(half);
    let a = args(&mock, work.path(), &models, &out, &extra);
    let mut child = command(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut rx = mock.answered_rx.clone();
    rx.wait_for(|n| *n >= half).await.unwrap();
    // Wait until the child has stored every answered call (its "stored call" log lines).
    let mut stored = 0;
    while stored < half {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the child ended before storing its calls");
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["fields"]["message"] == "stored call"
            && v["fields"]["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("openai:"))
        {
            stored += 1;
        }
    }
    child.kill().await.unwrap();
    let _ = child.wait().await;
    assert_eq!(mock.total_answered(), half);
    assert!(
        !out.join("scores.json").exists(),
        "the run was killed before its end"
    );

    // Resume: completes, repeats nothing, and ends where the uninterrupted run did.
    *mock.state.hold_after.lock().unwrap() = None;
    let mut resume = a.clone();
    resume.push("--resume".into());
    let (stdout, stderr) = run_to_end(&resume).await;
    // Each distinct request was answered as often as in the uninterrupted run (identical requests
    // of one run, e.g. a teacher-forced turn 0 and a dialogue's first turn, are not merged).
    assert_eq!(
        mock.answered_per_request(),
        ref_mock.answered_per_request(),
        "no call was repeated"
    );
    assert_eq!(
        mock.total_answered(),
        total,
        "the interrupted and resumed runs together made the reference's calls"
    );
    let (a_scores, b_scores) = (
        read_json(ref_out.join("scores.json")),
        read_json(out.join("scores.json")),
    );
    assert_eq!(a_scores["summary"], b_scores["summary"]);
    assert_eq!(a_scores["dialogues"], b_scores["dialogues"]);
    assert_eq!(a_scores["turn_mode"], b_scores["turn_mode"]);
    assert_eq!(
        std::fs::read_to_string(ref_out.join("transcripts.jsonl")).unwrap(),
        std::fs::read_to_string(out.join("transcripts.jsonl")).unwrap()
    );
    let calls = read_json(out.join("calls.json"));
    assert_eq!(
        calls["simulator"]["replayed"].as_u64().unwrap()
            + calls["judge"]["replayed"].as_u64().unwrap(),
        half as u64
    );
    assert_no_key(work.path(), &[&stdout, &stderr]);

    // `--resume --out DIR` alone reads the stored settings.
    let only = vec![
        "--registry".to_string(),
        work.path().join("models.toml").display().to_string(),
        "compare".into(),
        "--resume".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    let before = mock.state.inner.lock().unwrap().requests;
    run_to_end(&only).await;
    assert_eq!(
        mock.state.inner.lock().unwrap().requests,
        before,
        "a finished run needs no call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_get_an_invented_profile_once() {
    let mock = Mock::start(Plan::Off, None).await;
    let work = tempfile::tempdir().unwrap();
    let models = tiny_models(work.path());
    let out = work.path().join("run");
    let a = args(
        &mock,
        work.path(),
        &models[..1],
        &out,
        &["--prompts", "我头疼", "--no-turn-judging"],
    );
    let (stdout, stderr) = run_to_end(&a).await;
    run_to_end(&a).await;
    assert_eq!(
        mock.state.inner.lock().unwrap().profiles,
        1,
        "the profile is invented once and reused"
    );
    let scenarios = std::fs::read_to_string(out.join("scenarios.jsonl")).unwrap();
    let s: Value = serde_json::from_str(scenarios.lines().next().unwrap()).unwrap();
    assert_eq!(s["opening"], "我头疼");
    assert_eq!(s["language"], "zh");
    assert_eq!(s["profile"]["facts"][2]["red_flag"], true);
    let scores = read_json(out.join("scores.json"));
    assert_eq!(scores["summary"]["models"][0]["red_flags_total"], 1);
    assert_no_key(work.path(), &[&stdout, &stderr]);
}
