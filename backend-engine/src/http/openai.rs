//! OpenAI-compatible text generation: `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions`, streaming as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::HeaderValue;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use opentelemetry::KeyValue;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::shared::{MODEL_VERSION_HEADER, parse_json};
use crate::engine::Engine;
use crate::error::{Error, Protocol, Result};
use crate::lm::scheduler::{FinishReason, GenEvent};
use crate::lm::{ChatMessage, sampling::SamplingParams};
use crate::model::{GenOptions, Generation, ModelVersion};
use crate::otel::RequestSpan;
use crate::tasks::unix_now;

/// Default `max_tokens` for `/v1/completions` (as OpenAI's).
const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// Default `max_tokens` for `/v1/chat/completions`.
const DEFAULT_CHAT_TOKENS: usize = 256;
/// Most stop sequences per request (as OpenAI's).
const MAX_STOPS: usize = 4;

/// A completions or chat-completions request (unknown fields are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CompletionRequest {
    /// `name` or `name:version`.
    pub model: String,
    /// Completions: the prompt (a string, or an array of one string).
    #[serde(default)]
    pub prompt: Option<Prompt>,
    /// Chat: the conversation.
    #[serde(default)]
    pub messages: Option<Vec<MessageJson>>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Chat's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// 0..=2; 0 is greedy. Default 1.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// (0, 1]. Default 1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sampling seed: same seed, same text.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Up to 4 stop sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Stream as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `include_usage` adds a final usage chunk to a stream.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Only 1 is supported.
    #[serde(default)]
    pub n: Option<u64>,
    /// Also return the prompt's and the answer's token ids (causal-lm; as vLLM).
    #[serde(default)]
    pub return_token_ids: Option<bool>,
    /// Generate past stop tokens until `max_tokens` (as vLLM).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Parameters the engine does not support: a request that sets them is
    /// refused with a 400 naming the parameter rather than half-served.
    #[serde(default)]
    pub tools: Option<Value>,
    /// Not supported (see `tools`).
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Not supported (see `tools`).
    #[serde(default)]
    pub functions: Option<Value>,
    /// Not supported (see `tools`).
    #[serde(default)]
    pub function_call: Option<Value>,
    /// Only `{"type": "text"}` is supported.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Not supported (false, 0 or null accepted).
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Not supported.
    #[serde(default)]
    pub top_logprobs: Option<Value>,
    /// Not supported (an empty map is accepted).
    #[serde(default)]
    pub logit_bias: Option<Value>,
    /// Not supported (1 accepted).
    #[serde(default)]
    pub best_of: Option<Value>,
    /// Not supported (false accepted).
    #[serde(default)]
    pub echo: Option<Value>,
    /// Not supported.
    #[serde(default)]
    pub suffix: Option<Value>,
}

/// Refuses parameters the engine does not implement, naming them.
fn refuse_unsupported(req: &CompletionRequest) -> Result<()> {
    let set = |v: &Option<Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    };
    let text_format = req
        .response_format
        .as_ref()
        .is_some_and(|f| f.get("type").and_then(Value::as_str) == Some("text"));
    let best_of_one = req.best_of.as_ref().and_then(Value::as_u64) == Some(1);
    for (name, value) in [
        ("tools", &req.tools),
        ("tool_choice", &req.tool_choice),
        ("functions", &req.functions),
        ("function_call", &req.function_call),
        ("response_format", &req.response_format),
        ("logprobs", &req.logprobs),
        ("top_logprobs", &req.top_logprobs),
        ("logit_bias", &req.logit_bias),
        ("best_of", &req.best_of),
        ("echo", &req.echo),
        ("suffix", &req.suffix),
    ] {
        let allowed =
            (name == "response_format" && text_format) || (name == "best_of" && best_of_one);
        if set(value) && !allowed {
            return Err(Error::InvalidRequest(format!(
                "{name}: not supported by this engine"
            )));
        }
    }
    Ok(())
}

/// A prompt: one string, or an array holding one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One string.
    Text(String),
    /// An array of strings (exactly one is supported).
    Many(Vec<String>),
}

/// `stop`: a string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageJson {
    /// Role.
    pub role: String,
    /// A string, an array of `{type: "text", text}` parts, or null.
    #[serde(default)]
    pub content: Option<Value>,
}

/// Which endpoint a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

struct Prepared {
    model: Arc<ModelVersion>,
    options: GenOptions,
    token_ids: bool,
    label: String,
    prompt: String,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
    endpoint: Endpoint,
    id: String,
    created: u64,
}

fn message_text(m: &MessageJson, i: usize) -> Result<String> {
    match &m.content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(Error::InvalidRequest(format!(
                            "messages[{i}].content: only text parts are supported"
                        )));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(Error::InvalidRequest(format!(
            "messages[{i}].content must be a string or an array of text parts"
        ))),
    }
}

fn prepare(engine: &Engine, req: CompletionRequest, endpoint: Endpoint) -> Result<Prepared> {
    let model = engine.resolve_openai(&req.model)?;
    if !model.is_lm() {
        return Err(Error::NotLanguageModel(model.name().to_string()));
    }
    refuse_unsupported(&req)?;
    let explicit = req.max_completion_tokens.or(req.max_tokens).is_some();
    let options = GenOptions {
        explicit_max_tokens: explicit,
        ignore_eos: req.ignore_eos.unwrap_or(false),
    };
    let token_ids = req.return_token_ids.unwrap_or(false);
    let params = sampling(
        engine,
        req.max_completion_tokens.or(req.max_tokens),
        &req,
        endpoint,
    )?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let prompt = match (endpoint, req.prompt, req.messages) {
        (Endpoint::Completions, Some(Prompt::Text(p)), None) => p,
        (Endpoint::Completions, Some(Prompt::Many(mut v)), None) if v.len() == 1 => v.remove(0),
        (Endpoint::Completions, Some(Prompt::Many(_)), None) => {
            return Err(Error::InvalidRequest(
                "prompt: exactly one prompt per request is supported".to_string(),
            ));
        }
        (Endpoint::Completions, None, _) => {
            return Err(Error::InvalidRequest("prompt: required".to_string()));
        }
        (Endpoint::Chat, None, Some(messages)) => {
            if messages.is_empty() {
                return Err(Error::InvalidRequest(
                    "messages: must not be empty".to_string(),
                ));
            }
            let rendered = messages
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Ok(ChatMessage {
                        role: m.role.clone(),
                        content: message_text(m, i)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            model.render_chat(&rendered)?
        }
        (Endpoint::Chat, _, None) => {
            return Err(Error::InvalidRequest("messages: required".to_string()));
        }
        (_, Some(_), Some(_)) => {
            return Err(Error::InvalidRequest(
                "give either prompt (completions) or messages (chat), not both".to_string(),
            ));
        }
    };
    let id_prefix = match endpoint {
        Endpoint::Completions => "cmpl",
        Endpoint::Chat => "chatcmpl",
    };
    Ok(Prepared {
        label: format!("{}:{}", model.name(), model.version()),
        model,
        options,
        token_ids,
        prompt,
        params,
        stream,
        include_usage,
        endpoint,
        id: format!("{id_prefix}-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
    })
}

/// Checks the sampling and stopping parameters of a request.
pub(super) fn sampling(
    engine: &Engine,
    max_tokens: Option<u64>,
    req: &CompletionRequest,
    endpoint: Endpoint,
) -> Result<SamplingParams> {
    if let Some(n) = req.n
        && n != 1
    {
        return Err(Error::InvalidRequest(format!(
            "n: only 1 is supported, not {n}"
        )));
    }
    let default = match endpoint {
        Endpoint::Completions => DEFAULT_COMPLETION_TOKENS,
        Endpoint::Chat => DEFAULT_CHAT_TOKENS.min(engine.max_tokens_limit),
    };
    let max_tokens = match max_tokens {
        None => default,
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n == 0 || n > engine.max_tokens_limit {
                return Err(Error::InvalidRequest(format!(
                    "max_tokens: must be between 1 and {}, not {n}",
                    engine.max_tokens_limit
                )));
            }
            n
        }
    };
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(Error::InvalidRequest(format!(
            "temperature: must be between 0 and 2, not {temperature}"
        )));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Error::InvalidRequest(format!(
            "top_p: must be in (0, 1], not {top_p}"
        )));
    }
    let stop = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err(Error::InvalidRequest(format!(
            "stop: at most {MAX_STOPS} sequences, not {}",
            stop.len()
        )));
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "sampling runs in f32; the range was checked"
    )]
    Ok(SamplingParams {
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        // A negative seed is as good a seed as its bit pattern.
        seed: req.seed.map(i64::cast_unsigned),
        stop,
    })
}

fn usage_json(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Runs a request to the end and returns the OpenAI response body. Used by
/// the non-streaming endpoints and by async tasks.
pub async fn complete(
    engine: &Engine,
    req: CompletionRequest,
    endpoint: Endpoint,
) -> Result<Value> {
    let p = prepare(engine, req, endpoint)?;
    let generation = p.model.generate(&p.prompt, p.params.clone(), p.options)?;
    collect(p, generation, None).await
}

/// A generation run to its end.
pub(super) struct Finished {
    /// The whole generated text.
    pub text: String,
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// The generated token ids (causal-lm models).
    pub token_ids: Vec<u32>,
}

/// Waits for a generation's last event, gathering its text.
pub(super) async fn gather(rx: &mut mpsc::Receiver<GenEvent>, model: &str) -> Result<Finished> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(GenEvent::Text(t)) => text.push_str(&t),
            Some(GenEvent::Failed(m)) => return Err(Error::Runtime(m)),
            None => return Err(Error::Unavailable(model.to_string())),
            Some(GenEvent::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
                token_ids,
            }) => {
                return Ok(Finished {
                    text,
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    token_ids,
                });
            }
        }
    }
}

async fn collect(p: Prepared, generation: Generation, span: Option<&RequestSpan>) -> Result<Value> {
    let Generation {
        events: mut rx,
        prompt_ids,
    } = generation;
    let Finished {
        text,
        reason,
        prompt_tokens,
        completion_tokens,
        token_ids,
    } = gather(&mut rx, p.model.name()).await?;
    if let Some(span) = span {
        span.set(crate::otel::usage(
            prompt_tokens,
            completion_tokens,
            reason.as_str(),
        ));
    }
    let mut choice = match p.endpoint {
        Endpoint::Completions => json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": reason.as_str(),
        }),
        Endpoint::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": null,
            "finish_reason": reason.as_str(),
        }),
    };
    if p.token_ids {
        choice["token_ids"] = json!(token_ids);
    }
    let mut body = json!({
        "id": p.id,
        "object": match p.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion",
        },
        "created": p.created,
        "model": p.label,
        "choices": [choice],
        "usage": usage_json(prompt_tokens, completion_tokens),
    });
    if p.token_ids {
        body["prompt_token_ids"] = json!(prompt_ids);
    }
    Ok(body)
}

pub(super) async fn completions(
    State(engine): State<Arc<Engine>>,
    span: Option<Extension<RequestSpan>>,
    body: Bytes,
) -> Response {
    handle(&engine, span.map(|s| s.0), &body, Endpoint::Completions).await
}

pub(super) async fn chat_completions(
    State(engine): State<Arc<Engine>>,
    span: Option<Extension<RequestSpan>>,
    body: Bytes,
) -> Response {
    handle(&engine, span.map(|s| s.0), &body, Endpoint::Chat).await
}

/// The GenAI semantic conventions' name and attributes of a prepared
/// request, on its span.
fn describe(span: &RequestSpan, p: &Prepared, asked: &str) {
    let operation = match p.endpoint {
        Endpoint::Completions => "text_completion",
        Endpoint::Chat => "chat",
    };
    span.rename(format!("{operation} {asked}"));
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.request.model", asked.to_owned()),
        KeyValue::new("gen_ai.response.model", p.label.clone()),
        KeyValue::new("gen_ai.response.id", p.id.clone()),
        KeyValue::new("weir.model_version", p.model.version().to_owned()),
        KeyValue::new(
            "gen_ai.request.max_tokens",
            i64::try_from(p.params.max_tokens).unwrap_or(i64::MAX),
        ),
        KeyValue::new(
            "gen_ai.request.temperature",
            f64::from(p.params.temperature),
        ),
        KeyValue::new("gen_ai.request.top_p", f64::from(p.params.top_p)),
    ];
    if p.stream {
        attributes.push(KeyValue::new("gen_ai.request.stream", true));
    }
    span.set(attributes);
}

async fn handle(
    engine: &Engine,
    span: Option<RequestSpan>,
    body: &[u8],
    endpoint: Endpoint,
) -> Response {
    let result = async {
        let req: CompletionRequest = parse_json(body)?;
        let asked = req.model.clone();
        let p = prepare(engine, req, endpoint)?;
        if let Some(span) = &span {
            describe(span, &p, &asked);
        }
        let generation = p.model.generate(&p.prompt, p.params.clone(), p.options)?;
        let version = HeaderValue::from_str(p.model.version()).ok();
        let mut response = if p.stream {
            Sse::new(sse_stream(p, generation.events, span)).into_response()
        } else {
            let body = collect(p, generation, span.as_ref()).await?;
            Json(body).into_response()
        };
        if let Some(v) = version {
            response.headers_mut().insert(MODEL_VERSION_HEADER, v);
        }
        Ok::<_, Error>(response)
    }
    .await;
    result.unwrap_or_else(|e| e.into_http(Protocol::OpenAi))
}

enum Phase {
    Start,
    Streaming,
    Usage(Value),
    Done,
    End,
}

struct StreamState {
    p: Prepared,
    rx: mpsc::Receiver<GenEvent>,
    phase: Phase,
    /// Ends when the stream is dropped (after its last event, or when the
    /// client went away).
    span: Option<RequestSpan>,
}

impl StreamState {
    fn chunk(&self, choices: Value) -> Event {
        let mut v = json!({
            "id": self.p.id,
            "object": match self.p.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::Chat => "chat.completion.chunk",
            },
            "created": self.p.created,
            "model": self.p.label,
            "choices": choices,
        });
        if self.p.include_usage {
            v["usage"] = Value::Null;
        }
        Event::default().data(v.to_string())
    }

    fn choice(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.p.endpoint {
            Endpoint::Completions => json!([{
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish,
            }]),
            Endpoint::Chat => {
                let delta = text.map_or_else(|| json!({}), |t| json!({ "content": t }));
                json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }])
            }
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Streaming) {
                Phase::Start => {
                    if self.p.endpoint == Endpoint::Chat {
                        return Some(self.chunk(json!([{
                            "index": 0,
                            "delta": { "role": "assistant", "content": "" },
                            "logprobs": null,
                            "finish_reason": null,
                        }])));
                    }
                }
                Phase::Streaming => match self.rx.recv().await {
                    Some(GenEvent::Text(t)) => {
                        return Some(self.chunk(self.choice(Some(&t), None)));
                    }
                    Some(GenEvent::Finished {
                        reason,
                        prompt_tokens,
                        completion_tokens,
                        ..
                    }) => {
                        if let Some(span) = &self.span {
                            span.set(crate::otel::usage(
                                prompt_tokens,
                                completion_tokens,
                                reason.as_str(),
                            ));
                        }
                        self.phase = Phase::Usage(usage_json(prompt_tokens, completion_tokens));
                        return Some(self.chunk(self.choice(None, Some(reason.as_str()))));
                    }
                    Some(GenEvent::Failed(m)) => {
                        self.phase = Phase::Done;
                        if let Some(span) = &self.span {
                            span.fail(m.clone());
                        }
                        return Some(error_event(Error::Runtime(m)));
                    }
                    None => {
                        self.phase = Phase::Done;
                        if let Some(span) = &self.span {
                            span.fail("the model stopped before the answer ended".to_owned());
                        }
                        return Some(error_event(Error::Unavailable(
                            self.p.model.name().to_string(),
                        )));
                    }
                },
                Phase::Usage(usage) => {
                    self.phase = Phase::Done;
                    if self.p.include_usage {
                        let mut v = json!({
                            "id": self.p.id,
                            "object": match self.p.endpoint {
                                Endpoint::Completions => "text_completion",
                                Endpoint::Chat => "chat.completion.chunk",
                            },
                            "created": self.p.created,
                            "model": self.p.label,
                            "choices": [],
                        });
                        v["usage"] = usage;
                        return Some(Event::default().data(v.to_string()));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some(Event::default().data("[DONE]"));
                }
                Phase::End => {
                    self.phase = Phase::End;
                    return None;
                }
            }
        }
    }
}

fn error_event(e: Error) -> Event {
    Event::default().data(e.body(Protocol::OpenAi).to_string())
}

fn sse_stream(
    p: Prepared,
    rx: mpsc::Receiver<GenEvent>,
    span: Option<RequestSpan>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = StreamState {
        p,
        rx,
        phase: Phase::Start,
        span,
    };
    futures::stream::unfold(state, |mut st| async move {
        st.next_event().await.map(|e| (Ok(e), st))
    })
}

pub(super) async fn list_models(State(engine): State<Arc<Engine>>) -> Json<Value> {
    let models = engine.models();
    let mut data = Vec::new();
    for (name, set) in models.iter() {
        let created = unix_now().saturating_sub(engine.started.elapsed().as_secs());
        if let Some(default) = set.default_version() {
            data.push(json!({
                "id": name, "object": "model", "created": created, "owned_by": "weir",
                "version": default.version(), "kind": default.config.kind.as_str(),
            }));
        }
        for v in set.versions.values() {
            data.push(json!({
                "id": format!("{name}:{}", v.version()), "object": "model", "created": created,
                "owned_by": "weir", "version": v.version(),
                "kind": v.config.kind.as_str(),
            }));
        }
    }
    Json(json!({ "object": "list", "data": data }))
}
