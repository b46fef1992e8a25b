//! The HTTP API on the tiny fixture model: greedy results equal the library's, streaming shape,
//! stop strings, logprobs, models/health/metrics, and every malformed request is a 4xx with
//! OpenAI's error body while the server keeps serving. Every test is bounded in time.

mod common;

use common::{LIMIT, TestServer, golden_case, greedy, load_tiny, merge, stream_text};
use infer_core::engine::EngineConfig;
use infer_core::{ChatMessage, GenerateOptions, SamplerConfig};
use serde_json::{Value, json};

/// The library path: `Llama3::generate_ids` on the same prompt ids, greedy, EOS ignored.
fn library_greedy(prompt_ids: &[u32], max_tokens: usize) -> String {
    let mut model = load_tiny();
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: vec![],
        ignore_eos: true,
    };
    model.generate_ids(prompt_ids, &opts, &mut |_| {}).expect("generates").text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_greedy_equals_library_and_golden() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig::default()).await;
        let (prompt, golden) = golden_case("raw_en");
        let prompt = prompt.expect("text case");
        let ids = s.engine.tokenize(&prompt, true).expect("tokenizes");
        let want = library_greedy(&ids, 32);
        assert_eq!(want, golden, "library path vs golden");

        let (st, v) = s.post("/v1/completions", &merge(json!({"prompt": prompt}), greedy(32))).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().expect("id").starts_with("cmpl-"));
        assert_eq!(v["model"], "tiny-llama3");
        assert_eq!(v["choices"][0]["text"], want);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
        assert_eq!(v["usage"]["completion_tokens"], 32);
        assert_eq!(v["usage"]["total_tokens"], ids.len() + 32);

        // Token-id prompt, streamed: same text.
        let body = merge(json!({"prompt": ids, "stream_options": {"include_usage": true}}), greedy(32));
        let chunks = s.stream("/v1/completions", &body).await.all().await;
        assert_eq!(stream_text(&chunks), want);
        let last = chunks.last().expect("usage chunk");
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], 32);
        let fin = &chunks[chunks.len() - 2];
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()), "usage null before the last chunk");
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_greedy_equals_library_streamed_and_not() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig::default()).await;
        let messages =
            vec![ChatMessage::system("You are a helpful assistant."), ChatMessage::user("Hello, how are you?")];
        let ids = s.engine.chat_prompt_ids(&messages).expect("renders");
        let want = library_greedy(&ids, 24);
        let body = merge(json!({"model": "tiny-llama3", "messages": messages}), greedy(24));

        let (st, v) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().expect("id").starts_with("chatcmpl-"));
        assert!(v["created"].as_u64().expect("created") > 1_600_000_000);
        let choice = &v["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], want);
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
        assert_eq!(v["usage"]["completion_tokens"], 24);
        assert!(v["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

        // `max_completion_tokens` is the newer name of `max_tokens`.
        let mut body2 = body.clone();
        body2.as_object_mut().expect("object").remove("max_tokens");
        body2["max_completion_tokens"] = json!(24);
        let chunks = s.stream("/v1/chat/completions", &body2).await.all().await;
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]), "one id per stream");
        assert_eq!(stream_text(&chunks), want);
        let last = chunks.last().expect("final chunk");
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
        assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage without include_usage");
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_end_the_text() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig::default()).await;
        let (prompt, golden) = golden_case("raw_en");
        let cut = golden.find("Connectivity").expect("golden text has the stop string");
        for stop in [json!("Connectivity"), json!(["zzz-not-there", "Connectivity"])] {
            let body = merge(json!({"prompt": prompt, "stop": stop}), greedy(32));
            let (st, v) = s.post("/v1/completions", &body).await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["choices"][0]["text"], golden[..cut]);
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            let chunks = s.stream("/v1/completions", &body).await.all().await;
            assert_eq!(stream_text(&chunks), golden[..cut]);
            assert_eq!(chunks.last().expect("final")["choices"][0]["finish_reason"], "stop");
        }
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_have_openai_shapes() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig::default()).await;
        let msgs = json!([{"role": "user", "content": "Hi"}]);
        let body = merge(json!({"messages": msgs, "logprobs": true, "top_logprobs": 3}), greedy(6));
        let (st, v) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        let content = v["choices"][0]["logprobs"]["content"].as_array().expect("content");
        assert_eq!(content.len(), 6);
        for t in content {
            let top = t["top_logprobs"].as_array().expect("top");
            assert_eq!(top.len(), 3);
            assert!(t["token"].is_string() && t["bytes"].is_array());
            let lp = t["logprob"].as_f64().expect("logprob");
            assert!(lp <= 0.0);
            // Greedy picks the most likely token: it is the first alternative.
            assert_eq!(top[0]["token"], t["token"]);
            assert!((top[0]["logprob"].as_f64().expect("lp") - lp).abs() < 1e-6);
            assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        }
        let chunks = s.stream("/v1/chat/completions", &body).await.all().await;
        let n: usize =
            chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).map(Vec::len).sum();
        assert_eq!(n, 6, "one logprob entry per token in the stream");

        let body = merge(json!({"prompt": "The capital of France is", "logprobs": 2}), greedy(5));
        let (st, v) = s.post("/v1/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        let lp = &v["choices"][0]["logprobs"];
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            assert_eq!(lp[key].as_array().expect(key).len(), 5, "{key}");
        }
        assert!(lp["top_logprobs"].as_array().expect("top").iter().all(|m| m.as_object().expect("map").len() <= 2));
        assert_eq!(lp["text_offset"][0], 0);

        // Without logprobs asked for: null.
        let (_, v) = s.post("/v1/chat/completions", &merge(json!({"messages": msgs}), greedy(2))).await;
        assert!(v["choices"][0]["logprobs"].is_null());
    })
    .await
    .expect("test within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_metrics_and_served_name() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start_model(load_tiny(), EngineConfig::default(), Some("my-llama")).await;
        let (st, body) = s.get("/v1/models").await;
        assert_eq!(st, 200);
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], "my-llama");
        assert_eq!(v["data"][0]["object"], "model");
        assert_eq!(s.get("/v1/models/my-llama").await.0, 200);
        assert_eq!(s.get("/v1/models/other").await.0, 404);
        assert_eq!(s.get("/health").await.0, 200);

        let msgs = json!([{"role": "user", "content": "Hi"}]);
        let (st, v) =
            s.post("/v1/chat/completions", &merge(json!({"model": "my-llama", "messages": msgs}), greedy(3))).await;
        assert_eq!((st, &v["model"]), (200, &json!("my-llama")));
        let (st, v) =
            s.post("/v1/chat/completions", &merge(json!({"model": "gpt-4", "messages": msgs}), greedy(3))).await;
        assert_eq!((st, &v["error"]["code"]), (404, &json!("model_not_found")));

        let (st, text) = s.get("/metrics").await;
        assert_eq!(st, 200);
        for name in [
            "rustinfer_requests_total",
            "rustinfer_queue_depth",
            "rustinfer_kv_cache_usage_ratio",
            "rustinfer_generation_tokens_total",
            "rustinfer_generation_tokens_per_second",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} in\n{text}");
        }
        assert!(s.metric("rustinfer_generation_tokens_total").await >= 3.0);
        assert!(s.metric("rustinfer_requests_total").await >= 1.0);
    })
    .await
    .expect("test within the time limit");
}

/// Each bad request: (path, body, status, error.param or None).
fn bad_requests() -> Vec<(&'static str, Vec<u8>, u16, Option<&'static str>)> {
    let chat = |v: Value| ("/v1/chat/completions", v.to_string().into_bytes());
    let cmpl = |v: Value| ("/v1/completions", v.to_string().into_bytes());
    let m = json!([{"role": "user", "content": "Hi"}]);
    let mut cases = vec![
        (chat(json!({"messages": m, "max_tokens": 0})), 400, Some("max_tokens")),
        (chat(json!({"messages": m, "max_tokens": -5})), 400, Some("max_tokens")),
        (chat(json!({"messages": m, "max_tokens": 1_000_000_000_000i64})), 400, Some("max_tokens")),
        (chat(json!({"messages": m, "max_tokens": 1000})), 400, Some("max_tokens")), // prompt + 1000 > 1024
        (chat(json!({"messages": m, "max_tokens": "ten"})), 400, Some("max_tokens")),
        (chat(json!({"messages": []})), 400, Some("messages")),
        (chat(json!({"messages": "hi"})), 400, Some("messages")),
        (chat(json!({"messages": [{"role": "user"}], "n": 2})), 400, Some("n")),
        (chat(json!({"messages": [{"content": "x"}]})), 400, Some("messages[0]")), // missing `role`
        (chat(json!({"messages": [{"role": "wizard", "content": "x"}]})), 400, Some("messages[0].role")),
        (chat(json!({"messages": [{"role": "user", "content": 5}]})), 400, Some("messages[0].content")),
        (chat(json!({"messages": m, "temperature": -1})), 400, Some("temperature")),
        (chat(json!({"messages": m, "temperature": "hot"})), 400, Some("temperature")),
        (chat(json!({"messages": m, "top_p": 0})), 400, Some("top_p")),
        (chat(json!({"messages": m, "presence_penalty": 3})), 400, Some("presence_penalty")),
        (chat(json!({"messages": m, "stop": 7})), 400, Some("stop")),
        (chat(json!({"messages": m, "stream": "yes"})), 400, Some("stream")),
        (chat(json!({"messages": m, "user": 12})), 400, Some("user")),
        (chat(json!({"messages": m, "logprobs": true, "top_logprobs": 21})), 400, Some("top_logprobs")),
        (chat(json!({"messages": m, "top_logprobs": 2})), 400, Some("top_logprobs")),
        (chat(json!({"messages": m, "stream_options": {"include_usage": true}})), 400, Some("stream_options")),
        (cmpl(json!({"prompt": "x", "echo": true})), 400, Some("echo")),
        (cmpl(json!({"prompt": "x", "logprobs": 6})), 400, Some("logprobs")),
        (cmpl(json!({"prompt": [999_999_999u32]})), 400, Some("prompt")),
        (cmpl(json!({"prompt": ""})), 400, Some("prompt")),
        (cmpl(json!({"prompt": ["a", "b"]})), 400, Some("prompt")),
        (cmpl(json!({"prompt": {"text": "x"}})), 400, Some("prompt")),
        (cmpl(json!({"max_tokens": 3})), 400, None),
    ];
    let raw = |p: &'static str, b: &[u8]| ((p, b.to_vec()), 400, None);
    cases.push(raw("/v1/chat/completions", b"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}"));
    cases.push(raw("/v1/chat/completions", b"not json"));
    cases.push(raw("/v1/chat/completions", b""));
    cases.push(raw("/v1/chat/completions", b"[1, 2]"));
    cases.push(raw("/v1/completions", b"{\"prompt\": \"\xff\xfe bad utf-8\"}"));
    cases.into_iter().map(|((p, b), s, param)| (p, b, s, param)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_openai_errors_and_the_server_keeps_serving() {
    tokio::time::timeout(LIMIT, async {
        let s = TestServer::start(EngineConfig::default()).await;
        for (path, body, status, param) in bad_requests() {
            let shown = String::from_utf8_lossy(&body).into_owned();
            let (st, v) = s.post_raw(path, body).await;
            assert_eq!(st, status, "{path} {shown}: {v}");
            let e = &v["error"];
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{shown}: {v}");
            assert_eq!(e["type"], "invalid_request_error", "{shown}: {v}");
            assert!(e.get("code").is_some(), "{shown}: {v}");
            if let Some(p) = param {
                assert_eq!(e["param"], p, "{shown}: {v}");
            }
        }
        let (st, body) = s.get("/v1/nope").await;
        assert_eq!(st, 404);
        let v: Value = serde_json::from_str(&body).expect("JSON 404");
        assert!(v["error"]["message"].is_string());
        assert_eq!(s.get("/v1/chat/completions").await.0, 405);
        // Still serving, and unknown fields are ignored.
        let body =
            merge(json!({"messages": [{"role": "user", "content": "Hi"}], "some_extension": {"a": 1}}), greedy(2));
        let (st, v) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(s.get("/health").await.0, 200);
    })
    .await
    .expect("test within the time limit");
}
