//! The answers' wire shapes: `chat.completion`, `chat.completion.chunk` and
//! `text_completion` objects, and the server-sent-event frames of a stream
//! (role chunk, content deltas, finish chunk, usage chunk when asked for,
//! `data: [DONE]`), as OpenAI and vLLM write them.
//!
//! Triage adds one object, `triage` (request id, tier, score, answering
//! model), to the non-streamed answer and to a stream's finish chunk: a
//! stream's routing is known only at its end, after its headers were sent.

use std::sync::Arc;

use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use triage_ledger::PriceBook;
use triage_protocol::{Completion, TokenLogprob};

use crate::error::ApiError;
use crate::request::Endpoint;

/// What every object of one answer shares.
#[derive(Debug, Clone)]
pub struct Shape {
    endpoint: Endpoint,
    /// `chatcmpl-<request id>` or `cmpl-<request id>`.
    id: String,
    request_id: String,
    created: u64,
    /// The model name the client asked for, echoed in every object.
    model: String,
    include_usage: bool,
    /// Prices for `usage.cost_usd`, when the gateway has the ledger's.
    prices: Option<Arc<PriceBook>>,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    /// What the answering attempt cost, at the ledger's prices (absent
    /// without them). Earlier attempts of a restarted or escalated request
    /// are in the ledger, not here.
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
}

/// Routing facts of an answer, Triage's addition.
#[derive(Serialize)]
struct TriageInfo<'a> {
    request_id: &'a str,
    tier: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    model: &'a str,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

/// A choice of any of the three objects: the fields that are `None` are
/// the ones the object does not have.
#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<Delta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    logprobs: Option<LogprobsOut<'a>>,
    finish_reason: Option<&'a str>,
}

/// OpenAI's chat `logprobs`: `{"content": [{token, logprob, bytes,
/// top_logprobs: [{token, logprob, bytes}]}]}`.
#[derive(Serialize)]
struct LogprobsOut<'a> {
    content: Vec<TokenOut<'a>>,
}

#[derive(Serialize)]
struct TokenOut<'a> {
    token: &'a str,
    logprob: f64,
    bytes: &'a [u8],
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<TokenOut<'a>>>,
}

fn token_out(token: &str, logprob: f64) -> TokenOut<'_> {
    TokenOut {
        token,
        logprob,
        bytes: token.as_bytes(),
        top_logprobs: None,
    }
}

fn logprobs_out(c: &Completion) -> Option<LogprobsOut<'_>> {
    c.logprobs.as_deref().map(logprobs_of)
}

fn logprobs_of(tokens: &[TokenLogprob]) -> LogprobsOut<'_> {
    let content = tokens
        .iter()
        .map(|t| TokenOut {
            top_logprobs: Some(
                t.top_logprobs
                    .iter()
                    .map(|a| token_out(&a.token, a.logprob))
                    .collect(),
            ),
            ..token_out(&t.token, t.logprob)
        })
        .collect();
    LogprobsOut { content }
}

#[derive(Serialize)]
struct Object<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    triage: Option<TriageInfo<'a>>,
}

fn usage(c: &Completion, prices: Option<&PriceBook>) -> UsageOut {
    let cost_usd = prices
        .and_then(|p| p.cost(c.tier, &c.model, &c.usage, chrono::Utc::now()).ok())
        .and_then(|cost| cost.total.to_f64());
    UsageOut {
        prompt_tokens: c.usage.prompt_tokens,
        completion_tokens: c.usage.completion_tokens,
        total_tokens: c.usage.total_tokens(),
        cost_usd,
    }
}

fn finish_reason(c: &Completion) -> &str {
    if c.finish_reason.is_empty() {
        "stop"
    } else {
        &c.finish_reason
    }
}

/// Appends one SSE event carrying `json`.
fn frame(out: &mut Vec<u8>, json: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    // Serialising these plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut *out, json).expect("answer objects serialise");
    out.extend_from_slice(b"\n\n");
}

const DONE: &[u8] = b"data: [DONE]\n\n";

impl Shape {
    /// The shape of the answer to request `request_id` for `model`.
    pub fn new(endpoint: Endpoint, request_id: &str, model: &str, include_usage: bool) -> Self {
        let id = match endpoint {
            Endpoint::Chat => format!("chatcmpl-{request_id}"),
            Endpoint::Completions => format!("cmpl-{request_id}"),
        };
        Self {
            endpoint,
            id,
            request_id: request_id.to_string(),
            created: triage_protocol::now_ms() / 1000,
            model: model.to_string(),
            include_usage,
            prices: None,
        }
    }

    /// Adds `usage.cost_usd` from `prices`.
    pub fn with_prices(mut self, prices: Option<Arc<PriceBook>>) -> Self {
        self.prices = prices;
        self
    }

    fn object<'a>(&'a self, streamed: bool, choices: Vec<Choice<'a>>) -> Object<'a> {
        let object = match (self.endpoint, streamed) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        };
        Object {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage: None,
            triage: None,
        }
    }

    fn triage<'a>(&'a self, c: &'a Completion) -> TriageInfo<'a> {
        TriageInfo {
            request_id: &self.request_id,
            tier: c.tier.number(),
            score: c.routing.as_ref().map(|r| r.score),
            model: &c.model,
        }
    }

    /// A streamed choice: a delta for chat, text for completions.
    fn streamed<'a>(&self, text: Option<&'a str>, finish: Option<&'a str>) -> Choice<'a> {
        let chat = self.endpoint == Endpoint::Chat;
        Choice {
            index: 0,
            message: None,
            delta: chat.then_some(Delta {
                role: None,
                content: text,
            }),
            text: (!chat).then_some(text.unwrap_or("")),
            logprobs: None,
            finish_reason: finish,
        }
    }

    /// The frames that open a stream: the chat role chunk (completions
    /// have none).
    pub fn start(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.endpoint == Endpoint::Chat {
            let role = Choice {
                delta: Some(Delta {
                    role: Some("assistant"),
                    content: Some(""),
                }),
                ..self.streamed(None, None)
            };
            frame(&mut out, &self.object(true, vec![role]));
        }
        out
    }

    /// One content delta.
    pub fn delta(&self, text: &str) -> Vec<u8> {
        self.delta_with(text, None)
    }

    /// A content delta carrying its tokens' logprobs (chat streams).
    pub fn delta_with(&self, text: &str, logprobs: Option<&[TokenLogprob]>) -> Vec<u8> {
        let mut choice = self.streamed(Some(text), None);
        if self.endpoint == Endpoint::Chat {
            choice.logprobs = logprobs.map(logprobs_of);
        }
        let mut out = Vec::new();
        frame(&mut out, &self.object(true, vec![choice]));
        out
    }

    /// The frames that end a successful stream: the finish chunk (with
    /// `triage`), the usage chunk when asked for, `[DONE]`.
    pub fn finish(&self, c: &Completion) -> Vec<u8> {
        let mut out = Vec::new();
        // OpenAI's finish chunk has an empty delta (`{}`), or empty text.
        let mut last = self.object(true, vec![self.streamed(None, Some(finish_reason(c)))]);
        last.triage = Some(self.triage(c));
        frame(&mut out, &last);
        if self.include_usage {
            let mut u = self.object(true, Vec::new());
            u.usage = Some(usage(c, self.prices.as_deref()));
            frame(&mut out, &u);
        }
        out.extend_from_slice(DONE);
        out
    }

    /// The frames that end a failed stream: OpenAI's streamed error event
    /// (which the SDKs raise as an `APIError`), then `[DONE]` as vLLM does.
    pub fn error(&self, e: &ApiError) -> Vec<u8> {
        let mut out = Vec::new();
        frame(&mut out, &e.body());
        out.extend_from_slice(DONE);
        out
    }

    /// The whole, non-streamed answer.
    pub fn whole(&self, text: &str, c: &Completion) -> Vec<u8> {
        let chat = self.endpoint == Endpoint::Chat;
        let choice = Choice {
            index: 0,
            message: chat.then_some(Message {
                role: "assistant",
                content: text,
            }),
            delta: None,
            text: (!chat).then_some(text),
            // Chat's shape only; the legacy completions shape is not written.
            logprobs: if chat { logprobs_out(c) } else { None },
            finish_reason: Some(finish_reason(c)),
        };
        let mut choices = vec![choice];
        choices.extend(c.alternatives.iter().map(|a| Choice {
            index: a.index,
            message: chat.then_some(Message {
                role: "assistant",
                content: &a.text,
            }),
            delta: None,
            text: (!chat).then_some(a.text.as_str()),
            logprobs: None,
            finish_reason: Some(a.finish_reason.as_str()),
        }));
        let mut o = self.object(false, choices);
        o.usage = Some(usage(c, self.prices.as_deref()));
        o.triage = Some(self.triage(c));
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(&o).expect("answer objects serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use triage_protocol::{RoutingDecision, Tier, Usage};

    fn completion() -> Completion {
        Completion {
            id: "r1".into(),
            attempt: 1,
            finish_reason: "length".into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                estimated: false,
            },
            tier: Tier::Small,
            model: "sim-small".into(),
            ttft_ms: 1.0,
            total_ms: 2.0,
            chunks: 2,
            text_bytes: None,
            text: None,
            routing: Some(RoutingDecision::fixed(Tier::Small, "test")),
            logprobs: None,
            alternatives: Vec::new(),
        }
    }

    /// The JSON of each `data:` event, `[DONE]` as a string.
    fn events(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split_terminator("\n\n")
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("data event");
                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.into()))
            })
            .collect()
    }

    #[test]
    fn a_chat_stream_is_role_deltas_finish_usage_done() {
        let s = Shape::new(Endpoint::Chat, "r1", "triage-auto", true);
        let mut bytes = s.start();
        bytes.extend(s.delta("Hel"));
        bytes.extend(s.delta("lo"));
        bytes.extend(s.finish(&completion()));
        let e = events(&bytes);
        assert_eq!(e.len(), 6);
        for chunk in &e[..5] {
            assert_eq!(chunk["id"], "chatcmpl-r1");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "triage-auto");
            assert!(chunk["created"].is_u64());
        }
        assert_eq!(
            e[0]["choices"],
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
        );
        assert_eq!(e[1]["choices"][0]["delta"], json!({"content": "Hel"}));
        assert_eq!(e[3]["choices"][0]["delta"], json!({}));
        assert_eq!(e[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(
            e[3]["triage"],
            json!({"request_id": "r1", "tier": 1, "score": 0.0, "model": "sim-small"})
        );
        assert_eq!(e[4]["choices"], json!([]));
        assert_eq!(
            e[4]["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
        );
        assert_eq!(e[5], "[DONE]");
        assert!(e[1].get("usage").is_none());
    }

    #[test]
    fn usage_carries_the_answers_cost_at_the_ledgers_prices() {
        let price = |tier, input: &str, output: &str| triage_ledger::Price {
            id: Some(1),
            tier,
            model: None,
            input_per_1k: input.parse().unwrap(),
            output_per_1k: output.parse().unwrap(),
            effective_from: chrono::DateTime::UNIX_EPOCH,
        };
        let book = PriceBook::new(vec![
            price(Tier::Small, "0.1", "0.2"),
            price(Tier::Large, "0.8", "1.6"),
        ])
        .unwrap();
        let s = Shape::new(Endpoint::Chat, "r1", "m", true).with_prices(Some(Arc::new(book)));
        let e = events(&s.finish(&completion()));
        // 3 prompt tokens at $0.1/1K + 2 completion tokens at $0.2/1K.
        assert_eq!(e[1]["usage"]["cost_usd"], 0.0007);
        let whole: Value = serde_json::from_slice(&s.whole("Hi", &completion())).unwrap();
        assert_eq!(whole["usage"]["cost_usd"], 0.0007);
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk() {
        let s = Shape::new(Endpoint::Chat, "r1", "m", false);
        let e = events(&s.finish(&completion()));
        assert_eq!(e.len(), 2);
        assert_eq!(e[1], "[DONE]");
    }

    #[test]
    fn a_completions_stream_has_text_choices_and_no_role_chunk() {
        let s = Shape::new(Endpoint::Completions, "r1", "m", false);
        assert!(s.start().is_empty());
        let e = events(&s.delta("Hi"));
        assert_eq!(e[0]["object"], "text_completion");
        assert_eq!(e[0]["id"], "cmpl-r1");
        assert_eq!(
            e[0]["choices"],
            json!([{"index": 0, "text": "Hi", "logprobs": null, "finish_reason": null}])
        );
        let e = events(&s.finish(&completion()));
        assert_eq!(e[0]["choices"][0]["text"], "");
        assert_eq!(e[0]["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn an_error_ends_the_stream_in_openais_shape() {
        let s = Shape::new(Endpoint::Chat, "r1", "m", true);
        let e = events(&s.error(&ApiError::restarted()));
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["error"]["code"], "generation_restarted");
        assert_eq!(e[0]["error"]["type"], "server_error");
        assert_eq!(e[1], "[DONE]");
    }

    #[test]
    fn whole_answers_are_chat_completion_and_text_completion_objects() {
        let s = Shape::new(Endpoint::Chat, "r1", "triage-tier1", false);
        let v: Value = serde_json::from_slice(&s.whole("Hello", &completion())).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": null, "finish_reason": "length"}])
        );
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["triage"]["tier"], 1);
        let s = Shape::new(Endpoint::Completions, "r1", "m", false);
        let v: Value = serde_json::from_slice(&s.whole("Hello", &completion())).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "Hello");
        assert!(v["choices"][0].get("message").is_none());
    }
}
