//! Request bodies of the OpenAI API, as far as this server reads them.
//!
//! Unknown fields are ignored (clients send many); known fields are type-checked, so a wrongly
//! typed value is a 400 naming it. Fields of OpenAI's API this server does not implement are
//! declared with their types and rejected with a 400 when they ask for something it cannot do.

use serde::{Deserialize, Deserializer};

/// `stop`: one string or a list of strings.
#[derive(Debug, Default)]
pub struct Stop(pub Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(Stop(Vec::new())),
            serde_json::Value::String(s) => Ok(Stop(vec![s])),
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(serde::de::Error::custom("expected a string or an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Stop),
            _ => Err(serde::de::Error::custom("expected a string or an array of strings")),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Parameters shared by `/v1/chat/completions` and `/v1/completions`.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Stop,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Extension (vLLM): HF/CTRL repetition penalty.
    pub repetition_penalty: Option<f32>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[allow(dead_code)] // type-checked (a string), not used
    pub user: Option<String>,
    /// Extension (vLLM): keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// Accepted only when empty.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A chat message's content: a string, null, or a list of parts (only text parts).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string, null or an array of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// One incoming chat message.
#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    pub content: Option<Content>,
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<MessageIn>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<serde_json::Value>>,
}

/// `prompt` of `/v1/completions`: text or token ids (a batch of one is accepted too).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string, an array of token ids, or a batch of one of these")]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
}
