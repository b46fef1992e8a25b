//! `infer-cli serve` end to end: `--port 0` prints the bound address, the server answers over a
//! plain socket, bad flags fail fast, and SIGTERM stops it with exit code 0. Bounded in time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn tiny() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-llama3"))
}

/// One HTTP/1.1 exchange with `Connection: close`; returns the whole response text.
fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.write_all(request.as_bytes()).expect("writes");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reads");
    out
}

#[test]
fn serve_prints_its_address_answers_and_exits_0_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer-cli"))
        .args(["serve", "--model", tiny().to_str().expect("path"), "--port", "0", "--no-progress"])
        .args(["--context-length", "512", "--served-model-name", "tiny"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("the address within 2 minutes");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    let health = http(&addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = r#"{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"temperature":0}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = http(&addr, &req);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"chat.completion\"") && resp.contains("\"completion_tokens\":3"), "{resp}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    for _ in 0..600 {
        if let Some(status) = child.try_wait().expect("waits") {
            assert!(status.success(), "exit status {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("serve did not exit within 30 s of SIGTERM");
}

#[test]
fn serve_bad_flags_fail_fast() {
    let out = Command::new(env!("CARGO_BIN_EXE_infer-cli"))
        .args(["serve", "--model", tiny().to_str().expect("path"), "--port", "70000"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_infer-cli"))
        .args(["serve", "--model", "/nonexistent/model", "--port", "0"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error"), "one-line error");
}
