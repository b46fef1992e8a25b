//! Many clients at once on the tiny fixture: isolation of concurrent greedy requests, the
//! bounded queue (429), cancellation when a client drops its stream, graceful shutdown; and the
//! real SmolLM2 GGUF when `RUSTINFER_SMOLLM2` names it. Every test is bounded in time.

mod common;

use std::time::Duration;

use common::{LIMIT, TestServer, greedy, load, merge, stream_text};
use infer_core::engine::EngineConfig;
use serde_json::{Value, json};

fn prompt(i: usize) -> String {
    format!("Request number {i}: tell me about the number {} and {}", i * 7, "why".repeat(i + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_requests_each_get_their_solo_text() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig { max_batch: 8, ..EngineConfig::default() }).await;
        let body = |i: usize| merge(json!({"prompt": prompt(i)}), greedy(20 + i));
        let mut alone = Vec::new();
        for i in 0..8 {
            let (st, v) = s.post("/v1/completions", &body(i)).await;
            assert_eq!(st, 200, "{v}");
            alone.push(v["choices"][0]["text"].as_str().expect("text").to_string());
        }
        // All eight at once, half of them streamed.
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (b, path) = (body(i), "/v1/completions");
                let (client, url) = (s.client.clone(), s.url(path));
                tokio::spawn(async move {
                    let mut b = b;
                    b["stream"] = json!(i % 2 == 1);
                    let r = client.post(url).json(&b).send().await.expect("sent");
                    assert_eq!(r.status().as_u16(), 200);
                    let text = r.text().await.expect("body");
                    if i % 2 == 0 {
                        let v: Value = serde_json::from_str(&text).expect("JSON");
                        v["choices"][0]["text"].as_str().expect("text").to_string()
                    } else {
                        let chunks: Vec<Value> = text
                            .split("\n\n")
                            .filter_map(|e| e.strip_prefix("data: "))
                            .filter(|d| *d != "[DONE]")
                            .map(|d| serde_json::from_str(d).expect("chunk"))
                            .collect();
                        stream_text(&chunks)
                    }
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.expect("task"), alone[i], "request {i}");
        }
        s.wait_metric("rustinfer_kv_cache_blocks_used", 0.0).await;
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_and_a_dropped_stream_is_cancelled() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig { max_batch: 1, max_queue: 0, ..EngineConfig::default() }).await;
        let long = merge(json!({"prompt": "Once upon a time"}), greedy(900));
        let mut first = s.stream("/v1/completions", &long).await;
        // Wait until it is generating.
        let mut got = 0;
        while got < 3 {
            let d = first.next().await.expect("chunk");
            got += usize::from(d != "[DONE]");
        }
        let (st, v) = s.post("/v1/completions", &merge(json!({"prompt": "Hi"}), greedy(4))).await;
        assert_eq!(st, 429, "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert!(s.metric("rustinfer_kv_cache_blocks_used").await > 0.0);

        // The client goes away: the engine cancels the request and frees its blocks.
        drop(first);
        s.wait_metric("rustinfer_kv_cache_blocks_used", 0.0).await;
        s.wait_metric("rustinfer_requests_running", 0.0).await;
        assert!(s.metric("rustinfer_requests_cancelled_total").await >= 1.0);
        // And the next request is served.
        let (st, v) = s.post("/v1/completions", &merge(json!({"prompt": "Hi"}), greedy(4))).await;
        assert_eq!(st, 200, "{v}");
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_one_stream_leaves_the_others_running() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig { max_batch: 4, ..EngineConfig::default() }).await;
        let keep = merge(json!({"prompt": prompt(3)}), greedy(40));
        let (_, v) = s.post("/v1/completions", &keep).await;
        let alone = v["choices"][0]["text"].as_str().expect("text").to_string();

        let mut victim = s.stream("/v1/completions", &merge(json!({"prompt": prompt(5)}), greedy(900))).await;
        let other = s.stream("/v1/completions", &keep).await;
        victim.next().await.expect("first chunk");
        victim.next().await.expect("second chunk");
        drop(victim);
        assert_eq!(stream_text(&other.all().await), alone);
        s.wait_metric("rustinfer_kv_cache_blocks_used", 0.0).await;
        assert!(s.metric("rustinfer_requests_cancelled_total").await >= 1.0);
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_a_non_streamed_answer_is_cancelled() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig::default()).await;
        let body = merge(json!({"prompt": "Once"}), greedy(1000));
        let req = s.client.post(s.url("/v1/completions")).json(&body).timeout(Duration::from_millis(200));
        assert!(req.send().await.is_err(), "the client gives up first");
        s.wait_metric("rustinfer_requests_cancelled_total", 1.0).await;
        s.wait_metric("rustinfer_kv_cache_blocks_used", 0.0).await;
        assert!(s.metric("rustinfer_generation_tokens_total").await < 1000.0);
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_serve_returns() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig::default()).await;
        let base = s.base.clone();
        let client = s.client.clone();
        // A request that cannot finish within the 5 s grace.
        let mut long = s.stream("/v1/completions", &merge(json!({"prompt": "Once"}), greedy(1000))).await;
        long.next().await.expect("first chunk");
        let reader = tokio::spawn(async move {
            let mut n = 0usize;
            let mut last = String::new();
            while let Some(d) = long.next().await {
                n += 1;
                last = d;
            }
            (n, last)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.stop().await.expect("serve returns Ok");
        let (_, last) =
            tokio::time::timeout(Duration::from_secs(30), reader).await.expect("stream ends").expect("task");
        assert_eq!(last, "[DONE]", "the stream is closed properly");
        assert!(client.get(format!("{base}/health")).send().await.is_err(), "no longer accepting");
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_knows_the_capital_of_france() {
    let Some(path) = std::env::var_os("RUSTINFER_SMOLLM2") else {
        println!("SKIPPED: RUSTINFER_SMOLLM2 is not set (scripts/fetch_smollm2.sh)");
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start_model(load(path.into()), EngineConfig::default(), Some("smollm2")).await;
        let body = json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 32,
        });
        let (st, v) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().expect("content");
        assert!(text.contains("Paris"), "{text}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let chunks = s.stream("/v1/chat/completions", &body).await.all().await;
        assert_eq!(stream_text(&chunks), text);
    })
    .await
    .expect("test within the time limit");
}
