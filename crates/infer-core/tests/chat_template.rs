//! Renders the tiny-llama3 chat template (Llama 3.2's) against `tests/fixtures/chat_template_cases.json`,
//! made with Hugging Face transformers' `apply_chat_template`, and tokenizes the result.

use std::path::Path;

use infer_core::Error;
use infer_core::model::chat::{ChatMessage, ChatTemplate, RenderOptions};
use infer_core::model::tokenizer::HfTokenizer;
use serde::Deserialize;
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/");

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    date_string: Option<String>,
    rendered: String,
    ids: Vec<u32>,
    #[serde(default)]
    tools: Option<Vec<serde_json::Value>>,
}

fn model_dir() -> std::path::PathBuf {
    Path::new(FIXTURES).join("tiny-llama3")
}

fn template() -> ChatTemplate {
    ChatTemplate::from_model_dir(&model_dir()).unwrap().expect("tiny-llama3 has a chat template")
}

fn tokenizer() -> HfTokenizer {
    HfTokenizer::from_file(&model_dir().join("tokenizer.json")).unwrap()
}

/// Where two strings first differ, with some context around it.
fn diff(got: &str, want: &str) -> String {
    let at = got.chars().zip(want.chars()).take_while(|(a, b)| a == b).count();
    let ctx = |s: &str| s.chars().skip(at.saturating_sub(40)).take(80).collect::<String>();
    format!("first difference at char {at}:\n   got  …{:?}…\n   want …{:?}…", ctx(got), ctx(want))
}

#[test]
fn fixture_cases_render_and_tokenize_like_transformers() {
    let json = std::fs::read_to_string(Path::new(FIXTURES).join("chat_template_cases.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&json).unwrap();
    assert!(!cases.is_empty());
    let (tmpl, tok) = (template(), tokenizer());
    let bos = tok.token_to_id("<|begin_of_text|>").unwrap();
    let mut failures = Vec::new();
    for c in &cases {
        let opts = RenderOptions {
            add_generation_prompt: c.add_generation_prompt,
            tools: c.tools.clone(),
            date_string: c.date_string.clone(),
            ..Default::default()
        };
        let rendered = tmpl.render(&c.messages, &opts).unwrap();
        if rendered != c.rendered {
            failures.push(format!("{}: rendered text differs; {}", c.name, diff(&rendered, &c.rendered)));
            continue;
        }
        let ids = tok.encode_ids(&rendered, false).unwrap();
        if ids != c.ids {
            failures.push(format!("{}: ids differ\n   got  {ids:?}\n   want {:?}", c.name, c.ids));
        }
        let bos_count = ids.iter().filter(|&&id| id == bos).count();
        if bos_count != 1 || ids.first() != Some(&bos) {
            failures.push(format!("{}: expected exactly one leading BOS, ids {ids:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn tools_without_a_user_message_raise() {
    let tools = vec![json!({"type": "function", "function": {"name": "f", "parameters": {}}})];
    let opts = RenderOptions { tools: Some(tools), date_string: Some("26 Jul 2024".into()), ..Default::default() };
    let err = template().render(&[ChatMessage::system("sys")], &opts).unwrap_err();
    match err {
        Error::Template(msg) => assert!(msg.contains("Cannot put tools in the first user message"), "{msg}"),
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn multiple_tool_calls_raise() {
    let mut m = ChatMessage::assistant("");
    m.extra.insert("tool_calls".into(), json!([{"function": {"name": "a"}}, {"function": {"name": "b"}}]));
    let err = template().render(&[ChatMessage::user("hi"), m], &RenderOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::Template(msg) if msg.contains("single tool-calls")), "{err:?}");
}

#[test]
fn tool_calls_and_results() {
    let mut call = ChatMessage::assistant("");
    call.content = serde_json::Value::Null;
    call.extra.insert(
        "tool_calls".into(),
        json!([{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]),
    );
    let text_result = ChatMessage::new("tool", "sunny");
    let json_result = ChatMessage { content: json!({"temp": 21.5, "unit": "C"}), ..ChatMessage::new("ipython", "") };
    let opts = RenderOptions { date_string: Some("26 Jul 2024".into()), ..Default::default() };
    let out = template().render(&[ChatMessage::user("weather?"), call, text_result, json_result], &opts).unwrap();
    let tail = out.split("weather?<|eot_id|>").nth(1).unwrap();
    assert_eq!(
        tail,
        "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 2}}<|eot_id|>\
         <|start_header_id|>ipython<|end_header_id|>\n\n\"sunny\"<|eot_id|>\
         <|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 21.5, \"unit\": \"C\"}<|eot_id|>"
    );
}

#[test]
fn default_date_comes_from_strftime_now() {
    let out = template().render(&[ChatMessage::user("hi")], &RenderOptions::default()).unwrap();
    let today = chrono::Local::now().format("%d %b %Y").to_string();
    assert!(out.contains(&format!("Today Date: {today}\n")), "{out}");
}

#[test]
fn syntax_errors_are_errors() {
    for bad in ["{% for m in messages %}", "{{ messages[0] ", "{% if %}{% endif %}", "{% endfor %}"] {
        let err = ChatTemplate::new(bad, "", "").unwrap_err();
        assert!(matches!(err, Error::Template(_)), "{bad:?}: {err:?}");
    }
    // Errors at render time too (unknown filter).
    let t = ChatTemplate::new("{{ messages|nonexistent_filter }}", "", "")
        .map(|t| t.render(&[], &RenderOptions::default()));
    assert!(matches!(t, Err(Error::Template(_)) | Ok(Err(Error::Template(_)))), "{t:?}");
}

#[test]
fn template_tokens_come_from_tokenizer_config() {
    let t = template();
    assert_eq!(t.bos_token(), "<|begin_of_text|>");
    assert_eq!(t.eos_token(), "<|eot_id|>");
}
