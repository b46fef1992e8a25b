//! Chat templates, rendered with minijinja the way Hugging Face transformers renders them.
//!
//! transformers compiles `chat_template` with Jinja2 (`trim_blocks=True, lstrip_blocks=True`, loop
//! controls), adds the globals `raise_exception` and `strftime_now`, replaces `tojson` with
//! `json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...)`, and renders with
//! `messages`, `tools`, `documents`, `add_generation_prompt`, the special tokens and any extra
//! variables. [`ChatTemplate`] does the same, plus the Python string/dict methods of
//! `minijinja_contrib::pycompat` (`.strip()`, `.startswith()`, `.items()`, …) and Python's way of
//! printing `None`, booleans, floats, lists and dicts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::pyfmt::{is_iterable, python_formatter, tojson};
use crate::base::{Error, Result};

/// The name the template is registered under; template errors say `(in chat_template:LINE)`.
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation, as the template sees it (`message.role`, `message.content`, …).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, `ipython`, …
    pub role: String,
    /// Usually a string; may be null (tool calls) or structured (lists of parts, tool results).
    pub content: serde_json::Value,
    /// Other fields (`tool_calls`, `name`, `tool_call_id`, …), in insertion order.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message with text content and no extra fields.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: serde_json::Value::String(content.into()), extra: serde_json::Map::new() }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// What to render besides the messages.
#[derive(Default, Clone, Debug)]
pub struct RenderOptions {
    /// End with the header of an assistant turn, so the model writes the reply.
    pub add_generation_prompt: bool,
    /// Tool (function) definitions, passed as `tools` (`none` when absent, as transformers does).
    pub tools: Option<Vec<serde_json::Value>>,
    /// If set, defines `date_string` (Llama 3 templates otherwise use `strftime_now("%d %b %Y")`).
    pub date_string: Option<String>,
    /// Further template variables (e.g. `tools_in_user_message`); they override the ones above.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template with the special tokens it refers to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("source_len", &self.source.len())
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is an [`Error::Template`] with minijinja's message and line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_test("iterable", is_iterable);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(template_error)?;
        Ok(Self { env, source: source.to_string(), bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// Loads the chat template of a Hugging Face model directory: `chat_template.jinja` if present,
    /// else the `chat_template` of `tokenizer_config.json` (a string, or a list of `{name, template}`
    /// from which `default` is taken). `bos_token`/`eos_token` come from `tokenizer_config.json`
    /// (strings or `{content: ...}` objects). `Ok(None)` if the model has no chat template.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Config { path: config_path.clone(), msg: e.to_string() })?;
            Some(json)
        } else {
            None
        };
        let token = |name: &str| config.as_ref().and_then(|c| c.get(name)).and_then(token_content).unwrap_or_default();
        let (bos, eos) = (token("bos_token"), token("eos_token"));

        let jinja_path = dir.join("chat_template.jinja");
        let (source, origin) = if jinja_path.is_file() {
            (std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?, jinja_path)
        } else {
            match config.as_ref().map(|c| template_from_config(c, &config_path)).transpose()?.flatten() {
                Some(source) => (source, config_path),
                None => return Ok(None),
            }
        };
        match Self::new(&source, &bos, &eos) {
            Ok(template) => Ok(Some(template)),
            Err(Error::Template(msg)) => Err(Error::Template(format!("{}: {msg}", origin.display()))),
            Err(e) => Err(e),
        }
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value of `bos_token` in the template.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The value of `eos_token` in the template.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages`. Errors (including `raise_exception(msg)`) are [`Error::Template`].
    pub fn render(&self, messages: &[ChatMessage], opts: &RenderOptions) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert("tools".into(), opts.tools.as_ref().map_or(Value::from(()), Value::from_serialize));
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert("add_generation_prompt".into(), Value::from(opts.add_generation_prompt));
        ctx.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        if let Some(date) = &opts.date_string {
            ctx.insert("date_string".into(), Value::from(date.as_str()));
        }
        for (key, value) in &opts.extra {
            ctx.insert(key.clone(), Value::from_serialize(value));
        }
        let template = self.env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        template.render(Value::from(ctx)).map_err(template_error)
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` (the `AddedToken` form of tokenizer_config.json).
fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

/// The `chat_template` field of tokenizer_config.json: a string, or a list of named templates.
fn template_from_config(config: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    let bad = |msg: String| Error::Config { path: path.to_path_buf(), msg };
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let name = |t: &serde_json::Value| t.get("name").and_then(|n| n.as_str()).map(str::to_string);
            match list.iter().find(|t| name(t).as_deref() == Some("default")) {
                Some(t) => match t.get("template") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad("chat_template \"default\" has no string `template`".into())),
                },
                None => {
                    let names: Vec<String> = list.iter().filter_map(name).collect();
                    Err(bad(format!("chat_template lists templates {names:?} but none named \"default\"")))
                }
            }
        }
        Some(other) => Err(bad(format!("chat_template must be a string or a list, found {other}"))),
    }
}

/// A minijinja error as [`Error::Template`], with its causes.
fn template_error(err: minijinja::Error) -> Error {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let _ = write!(msg, ": {cause}");
        source = cause.source();
    }
    Error::Template(msg)
}

/// `raise_exception(msg)`: aborts rendering with `msg`.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: the local time formatted with a strftime format.
fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&fmt))
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, format!("invalid strftime format {fmt:?}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pyfmt::py_float;
    use serde_json::json;

    fn render_str(source: &str, vars: serde_json::Value) -> Result<String> {
        let t = ChatTemplate::new(source, "<s>", "</s>")?;
        let extra = vars.as_object().cloned().unwrap_or_default();
        t.render(&[], &RenderOptions { extra, ..Default::default() })
    }

    fn r(source: &str, vars: serde_json::Value) -> String {
        render_str(source, vars).unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let x = json!({"b": 1, "a": [1.5, "é\"\n", null, true], "e": {}, "l": []});
        assert_eq!(
            r("{{ x|tojson }}", json!({"x": x})),
            r#"{"b": 1, "a": [1.5, "é\"\n", null, true], "e": {}, "l": []}"#
        );
        assert_eq!(
            r("{{ x|tojson(indent=2) }}", json!({"x": x})),
            "{\n  \"b\": 1,\n  \"a\": [\n    1.5,\n    \"é\\\"\\n\",\n    null,\n    true\n  ],\n  \"e\": {},\n  \"l\": []\n}"
        );
        assert_eq!(r("{{ x|tojson(sort_keys=true) }}", json!({"x": {"b": 1, "a": 2}})), r#"{"a": 2, "b": 1}"#);
        assert_eq!(r("{{ x|tojson(separators=(',', ':')) }}", json!({"x": {"a": [1, 2]}})), r#"{"a":[1,2]}"#);
        assert_eq!(r("{{ x|tojson(ensure_ascii=true) }}", json!({"x": "é🦀"})), r#""\u00e9\ud83e\udd80""#);
        assert_eq!(r("{{ x|tojson(indent=0) }}", json!({"x": [1]})), "[\n1\n]");
        assert_eq!(r("{{ '<a & b>'|tojson }}", json!({})), r#""<a & b>""#);
        assert_eq!(r("{{ '\x01'|tojson }}", json!({})), r#""\u0001""#);
        assert!(render_str("{{ nope|tojson }}", json!({})).is_err());
    }

    #[test]
    fn floats_print_like_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123.456, "123.456"),
            (-0.0, "-0.0"),
            (0.30000000000000004, "0.30000000000000004"),
            (f64::INFINITY, "Infinity"),
            (f64::NAN, "NaN"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float(f), want, "{f:e}");
        }
    }

    #[test]
    fn values_print_like_jinja2() {
        assert_eq!(r("{{ none }}|{{ true }}|{{ x }}", json!({"x": 2.0})), "None|True|2.0");
        assert_eq!(
            r("{{ x }}", json!({"x": {"a": ["b", 1, null, false], "c": "it's"}})),
            r#"{'a': ['b', 1, None, False], 'c': "it's"}"#
        );
        assert_eq!(r("{{ 'x' }}{{ 3 }}", json!({})), "x3");
    }

    #[test]
    fn python_methods_and_tests() {
        assert_eq!(
            r("{{ '  a b '.strip() }}|{{ 'abc'.startswith('a') }}|{{ 'abc'.endswith('bc') }}", json!({})),
            "a b|True|True"
        );
        assert_eq!(r("{{ 'a,b'.split(',') }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}", json!({})), "['a', 'b']|ABab");
        assert_eq!(
            r("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", json!({"d": {"z": 1, "a": 2}})),
            "z=1;a=2;"
        );
        assert_eq!(
            r("{{ 's' is iterable }}{{ none is iterable }}{{ d is mapping }}", json!({"d": {}})),
            "TrueFalseTrue"
        );
        assert_eq!(
            r("{{ 'k' in d }}{{ 'q' in d }}{{ xs[1:]|length }}", json!({"d": {"k": 1}, "xs": [1, 2, 3]})),
            "TrueFalse2"
        );
        assert_eq!(
            r("{% for x in xs %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}", json!({"xs": [1, 2, 3]})),
            "1"
        );
    }

    #[test]
    fn whitespace_control_like_transformers() {
        let src = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t.render(&[ChatMessage::user("a"), ChatMessage::assistant("b")], &RenderOptions::default()).unwrap();
        assert_eq!(out, "[a]\n[b]\n");
    }

    #[test]
    fn globals_and_errors() {
        let today = chrono::Local::now().format("%Y").to_string();
        assert_eq!(r("{{ strftime_now('%Y') }}", json!({})), today);
        let err = render_str("{{ raise_exception('no way') }}", json!({})).unwrap_err();
        assert!(matches!(&err, Error::Template(m) if m.contains("no way")), "{err:?}");
        let err = ChatTemplate::new("{% if %}", "", "").unwrap_err();
        assert!(matches!(&err, Error::Template(m) if m.contains("syntax error")), "{err:?}");
        assert_eq!(r("{{ bos_token }}{{ date_string is defined }}{{ tools }}", json!({})), "<s>FalseNone");
    }

    #[test]
    fn message_serialization_keeps_extra_fields() {
        let mut m = ChatMessage::assistant("");
        m.content = serde_json::Value::Null;
        m.extra.insert("tool_calls".into(), json!([{"function": {"name": "f", "arguments": {"b": 1, "a": 2}}}]));
        let t = ChatTemplate::new(
            "{{ messages[0].tool_calls[0].function.arguments|tojson }}{{ 'tool_calls' in messages[0] }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[m.clone()], &RenderOptions::default()).unwrap(), r#"{"b": 1, "a": 2}True"#);
        let back: ChatMessage = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn loads_from_model_dirs() {
        let dir = std::env::temp_dir().join(format!("infer-core-chat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(ChatTemplate::from_model_dir(&dir).unwrap().is_none());

        let cfg = dir.join("tokenizer_config.json");
        std::fs::write(&cfg, json!({"bos_token": {"content": "<B>"}, "eos_token": "<E>"}).to_string()).unwrap();
        assert!(ChatTemplate::from_model_dir(&dir).unwrap().is_none());

        let list = json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}]);
        std::fs::write(
            &cfg,
            json!({"bos_token": {"content": "<B>"}, "eos_token": "<E>", "chat_template": list}).to_string(),
        )
        .unwrap();
        let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
        assert_eq!(t.render(&[], &RenderOptions::default()).unwrap(), "<B>D<E>");

        std::fs::write(&cfg, json!({"chat_template": [{"name": "tool_use", "template": "T"}]}).to_string()).unwrap();
        let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
        assert!(matches!(&err, Error::Config { path, .. } if path == &cfg), "{err:?}");

        std::fs::write(&cfg, json!({"chat_template": "{% if %}"}).to_string()).unwrap();
        let err = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("tokenizer_config.json"), "{err}");

        std::fs::write(dir.join("chat_template.jinja"), "J{{ eos_token }}\n").unwrap();
        std::fs::write(&cfg, json!({"eos_token": "<E>", "chat_template": "C"}).to_string()).unwrap();
        let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
        assert_eq!(t.render(&[], &RenderOptions::default()).unwrap(), "J<E>");

        std::fs::write(&cfg, "{ broken").unwrap();
        let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
        assert!(matches!(&err, Error::Config { path, .. } if path == &cfg), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
