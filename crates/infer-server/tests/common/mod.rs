//! Shared helpers: the tiny fixture model, an in-process server on 127.0.0.1:0, an HTTP client,
//! and an SSE reader. Every wait is bounded.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use infer_core::engine::{Engine, EngineConfig};
use infer_core::{Llama3, LoadOptions, Precision};
use infer_server::ServerConfig;
use serde_json::Value;
use tokio::sync::oneshot;

/// Upper bound on any single test's run.
pub const LIMIT: Duration = Duration::from_secs(180);

/// `tests/fixtures` of the repo (`RUSTINFER_FIXTURES` overrides it).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("RUSTINFER_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")),
    }
}

pub fn tiny_dir() -> PathBuf {
    fixtures().join("tiny-llama3")
}

/// The tiny model on the CPU, reference precision, 1024-token context.
pub fn load_tiny() -> Llama3 {
    load(tiny_dir())
}

pub fn load(path: PathBuf) -> Llama3 {
    let opts =
        LoadOptions { context_length: Some(1024), precision: Precision::Exact, progress: false, ..Default::default() };
    Llama3::load(path, opts).expect("fixture model loads")
}

/// A server running in this process until [`TestServer::stop`] (or drop).
pub struct TestServer {
    pub base: String,
    pub engine: Engine,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(cfg: EngineConfig) -> Self {
        Self::start_model(load_tiny(), cfg, None).await
    }

    pub async fn start_model(model: Llama3, cfg: EngineConfig, name: Option<&str>) -> Self {
        let engine = Engine::start(model, cfg).expect("engine starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let server_cfg = ServerConfig {
            model_name: name.map(str::to_string),
            shutdown_grace: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        let handle = tokio::spawn(infer_server::serve(engine.clone(), listener, server_cfg, async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder().timeout(LIMIT).build().expect("client");
        Self { base, engine, client, stop: Some(tx), handle: Some(handle) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON; returns (status, body as JSON).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(body).send().await.expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    /// POSTs raw bytes; returns (status, body as JSON).
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.expect("request sent");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Opens a stream (`"stream": true` is set); panics unless the status is 200.
    pub async fn stream(&self, path: &str, body: &Value) -> Sse {
        let mut body = body.clone();
        body["stream"] = Value::Bool(true);
        let r = self.client.post(self.url(path)).json(&body).send().await.expect("request sent");
        assert_eq!(r.status().as_u16(), 200, "stream status");
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        Sse { resp: r, buf: String::new() }
    }

    /// The value of one Prometheus metric.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Polls `/metrics` until `name == want` (bounded).
    pub async fn wait_metric(&self, name: &str, want: f64) {
        for _ in 0..400 {
            if self.metric(name).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{name} never became {want} (now {})", self.metric(name).await);
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(LIMIT, handle).await.expect("serve returns in time").expect("serve task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// An SSE response read event by event.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// The next `data:` payload, or `None` at the end of the body.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..i + 2).collect();
                let data: Vec<&str> =
                    event.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let chunk = self.resp.chunk().await.expect("stream reads")?;
            self.buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream"));
        }
    }

    /// Every payload up to `[DONE]` (which must come, and be last), parsed.
    pub async fn all(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(d) = self.next().await {
            if d == "[DONE]" {
                assert!(self.next().await.is_none(), "nothing after [DONE]");
                return out;
            }
            out.push(serde_json::from_str(&d).expect("chunk is JSON"));
        }
        panic!("stream ended without [DONE]");
    }
}

/// Concatenated `choices[0].delta.content` (chat) or `choices[0].text` (completions).
pub fn stream_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|ch| ch["delta"]["content"].as_str().or(ch["text"].as_str()))
        .collect()
}

/// Greedy request fields.
pub fn greedy(max_tokens: usize) -> Value {
    serde_json::json!({"temperature": 0, "max_tokens": max_tokens, "ignore_eos": true})
}

/// `a` with the fields of `b` added.
pub fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

/// The golden greedy text of a tiny-llama3 case (32 tokens, EOS ignored).
pub fn golden_case(name: &str) -> (Option<String>, String) {
    let text = std::fs::read_to_string(tiny_dir().join("golden.json")).expect("golden.json");
    let g: Value = serde_json::from_str(&text).expect("golden parses");
    let c = g["cases"].as_array().expect("cases").iter().find(|c| c["name"] == name).expect("case").clone();
    (c["prompt"].as_str().map(str::to_string), c["greedy_text"].as_str().expect("text").to_string())
}
