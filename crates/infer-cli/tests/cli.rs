//! The CLI end to end: `--json` greedy output against the golden reference, and bad flags.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infer-cli")).args(args).output().expect("runs infer-cli")
}

fn golden_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("tiny-llama3/golden.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[test]
fn json_greedy_matches_reference() {
    let model = fixtures().join("tiny-llama3");
    for case in golden_cases().iter().filter(|c| c["kind"] == "text") {
        let out = cli(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "32",
            "--ignore-eos",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
        assert_eq!(v["prompt_ids"], case["ids"], "{}", case["name"]);
        assert_eq!(v["ids"], case["greedy_ids"], "{}", case["name"]);
        assert_eq!(v["text"], case["greedy_text"], "{}", case["name"]);
        assert_eq!(v["finish_reason"], "length");
        for k in ["load_ms", "prefill_tokens_per_s", "decode_tokens_per_s"] {
            assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {v}");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("decode") && stderr.contains("tok/s"), "speed line on stderr: {stderr}");
    }
}

#[test]
fn streams_text_and_chat_mode() {
    let model = fixtures().join("tiny-llama3");
    let m = model.to_str().unwrap();
    let out = cli(&["generate", "-m", m, "-p", "The capital of France is", "--max-tokens", "5", "--temperature", "0"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("\\Template BMI"), "{text:?}");
    let out = cli(&[
        "generate",
        "-m",
        m,
        "-p",
        "Hello",
        "--chat",
        "--system",
        "Be brief.",
        "--max-tokens",
        "3",
        "--json",
        "--seed",
        "7",
        "--temperature",
        "0.8",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = v["prompt_ids"].as_array().unwrap();
    assert_eq!(ids.iter().filter(|x| **x == 128000).count(), 1, "BOS exactly once");
    assert_eq!(v["ids"].as_array().unwrap().len(), 3);
    // Same seed, same text.
    let again = cli(&[
        "generate",
        "-m",
        m,
        "-p",
        "Hello",
        "--chat",
        "--system",
        "Be brief.",
        "--max-tokens",
        "3",
        "--json",
        "--seed",
        "7",
        "--temperature",
        "0.8",
    ]);
    let w: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["ids"], w["ids"]);
}

#[test]
fn bad_flags_are_clear_errors() {
    let model = fixtures().join("tiny-llama3");
    let m = model.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "-m", m, "-p", "x", "--temperature", "hot"], "--temperature"),
        (&["generate", "-m", m, "-p", "x", "--device", "gpu"], "invalid device `gpu`"),
        (&["generate", "-m", m, "-p", "x", "--frobnicate"], "--frobnicate"),
        (&["generate", "-m", m], "--prompt"),
        (&["generate", "-m", m, "-p", "x", "--top-p", "2"], "top_p"),
        (&["generate", "-m", m, "-p", "x", "--context-length", "0"], "--context-length"),
        (&["generate", "-m", "/nonexistent", "-p", "x"], "/nonexistent"),
        (&["generate", "-m", m, "-p", "x", "--max-tokens", "100000"], "context length"),
        (&["generate", "-m", m, "-p", "x", "--system", "s"], "--system needs --chat"),
    ];
    for (args, want) in cases {
        let out = cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(want), "{args:?}: stderr {stderr:?} should mention {want:?}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

#[test]
fn interactive_chat_reads_stdin() {
    use std::io::Write;
    let model = fixtures().join("tiny-llama3");
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer-cli"))
        .args(["chat", "-m", model.to_str().unwrap(), "--max-tokens", "4", "--temperature", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello\nHow are you?\n/reset\nHi\n/exit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("decode").count(), 3, "three replies: {stderr}");
}

/// The SmolLM2 GGUF (`RUSTINFER_SMOLLM2`, else the cache of `scripts/fetch_smollm2.sh`).
fn smollm2() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUSTINFER_SMOLLM2") {
        return Some(PathBuf::from(p));
    }
    let cache = match std::env::var_os("RUSTINFER_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/rustinfer"),
    };
    Some(cache.join("smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf")).filter(|p| p.is_file())
}

#[test]
fn generate_from_a_gguf_file() {
    let Some(model) = smollm2() else {
        println!("SKIP: no SmolLM2 GGUF (run scripts/fetch_smollm2.sh or set RUSTINFER_SMOLLM2)");
        return;
    };
    let text = std::fs::read_to_string(fixtures().join("smollm2/golden.json")).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    let case = &golden["cases"][0];
    assert_eq!(case["name"], "chat_capital");
    let prompt = case["messages"][0]["content"].as_str().unwrap();
    let m = model.to_str().unwrap();
    let out =
        cli(&["generate", "--model", m, "--chat", "-p", prompt, "--temperature", "0", "--max-tokens", "48", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(v["prompt_ids"], case["ids"]);
    assert_eq!(v["ids"], case["greedy_ids"]);
    assert_eq!(v["text"], case["greedy_text"]);
    assert_eq!(v["finish_reason"], "stop");
}
