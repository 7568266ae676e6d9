//! A generation request over HTTP: its fields checked against the model and the server's limits, every
//! error a 4xx answer naming its field; and the JSON answer.
use crate::data::text::CorpusOptions;
use crate::data::vocab::Vocabulary;
use crate::error::{quote_chars, Error};
use crate::generate::options::{check_beam, prefix_ids, Generate, Generated, DEFAULT_NUM_CHARS};
use crate::generate::sampler::Sampler;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// The request fields `POST /v1/generate` takes.
const FIELDS: [&str; 11] =
    ["prefix", "num_chars", "temperature", "top_k", "top_p", "seed", "samples", "stop", "beam", "probs", "stream"];

/// A checked generation request.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) prefix: String,
    pub(super) generate: Generate,
    pub(super) stream: bool,
}

/// What a request is checked against: the model's vocabulary and text options, and the server's limits.
pub(super) struct Rules {
    pub(super) vocab: Vocabulary,
    pub(super) options: CorpusOptions,
    pub(super) max_chars: usize,
    pub(super) max_samples: usize,
}

#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    field: Option<String>,
    message: String,
}

impl ApiError {
    pub(super) fn field(name: &str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, field: Some(name.to_string()), message: message.into() }
    }

    pub(super) fn body(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, field: None, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "field": self.field });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot carry another request.
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        response
    }
}

/// The JSON answer to a generation request: the samples (or beams, most likely first) as `predict --json`
/// gives them, the number of requests generated in the same batch, and whether a shutdown cut them short.
pub(super) fn answer(samples: &[Generated], batch: usize, interrupted: bool) -> Value {
    let samples: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = json!({ "sample": i, "text": s.text, "generated": s.generated, "probs": s.probs, "stopped": s.stopped });
            if let Some(lp) = s.log_prob {
                v["log_prob"] = lp.into();
            }
            v
        })
        .collect();
    json!({ "samples": samples, "batch": batch, "interrupted": interrupted })
}

/// An optional field of `map` as a `T`; a value of the wrong type is an error naming the field.
/// What field `name` of a request holds, in words.
fn expected(name: &str) -> &'static str {
    match name {
        "prefix" | "stop" => "a string",
        "temperature" | "top_p" => "a number",
        "probs" | "stream" => "true or false",
        _ => "a whole number, 0 or more",
    }
}

fn field<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    name: &str,
) -> std::result::Result<Option<T>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|_| ApiError::field(name, format!("{name} must be {}, not {v}", expected(name)))),
    }
}

/// Checks a request body against the model and the server's limits: every error names its field.
pub(super) fn parse(body: &[u8], shared: &Rules) -> std::result::Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::body(StatusCode::BAD_REQUEST, format!("the body is not JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::body(StatusCode::BAD_REQUEST, "the body must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown,
            format!("unknown field {unknown:?}; the fields are {}", FIELDS.join(", ")),
        ));
    }
    let prefix: String = field(&map, "prefix")?.ok_or_else(|| ApiError::field("prefix", "prefix is required"))?;
    let prefix = shared.options.read_text(&prefix);
    // A text of the request in the model's vocabulary, or an error naming its field and the characters.
    let unknown = |name: &'static str, e: Error| match e {
        Error::UnknownChars { chars, .. } => {
            let quoted = quote_chars(&chars);
            ApiError::field(name, format!("{name} has characters the model does not know: {quoted}"))
        }
        Error::InvalidConfig { reason, .. } => ApiError::field(name, format!("{name} {reason}")),
        other => ApiError::field(name, other.to_string()),
    };
    prefix_ids(&shared.vocab, &prefix).map_err(|e| unknown("prefix", e))?;
    let num_chars = field(&map, "num_chars")?.unwrap_or(DEFAULT_NUM_CHARS);
    if num_chars > shared.max_chars {
        return Err(ApiError::field("num_chars", format!("num_chars is at most {} here", shared.max_chars)));
    }
    let samples: usize = field(&map, "samples")?.unwrap_or(1);
    if !(1..=shared.max_samples).contains(&samples) {
        return Err(ApiError::field("samples", format!("samples must be from 1 to {}", shared.max_samples)));
    }
    let (temperature, top_k, top_p) = (field(&map, "temperature")?, field(&map, "top_k")?, field(&map, "top_p")?);
    let seed: Option<u64> = field(&map, "seed")?;
    let beam: Option<usize> = field(&map, "beam")?;
    if let Some(beam) = beam {
        check_beam(beam, shared.max_samples).map_err(|e| match e {
            Error::InvalidConfig { reason, .. } => ApiError::field("beam", format!("beam {reason}")),
            other => ApiError::field("beam", other.to_string()),
        })?;
        let sampling = ["temperature", "top_k", "top_p", "seed", "samples"].into_iter().find(|f| map.contains_key(*f));
        if let Some(other) = sampling {
            return Err(ApiError::field(
                "beam",
                format!("beam searches for the most likely continuations: drop {other}"),
            ));
        }
    }
    let sampler = Sampler::from_settings(temperature, top_k, top_p, seed.unwrap_or(0), samples).map_err(|name| {
        ApiError::field(name, format!("{name} has no effect at temperature 0 (greedy): give a temperature above 0"))
    })?;
    let stop: Option<String> = field(&map, "stop")?;
    let stop = stop.map(|s| shared.options.read_text(&s));
    if let Some(stop) = &stop {
        if stop.is_empty() {
            return Err(ApiError::field("stop", "stop must not be empty"));
        }
        shared.vocab.encode(stop, "stop").map_err(|e| unknown("stop", e))?;
    }
    let probs = field(&map, "probs")?.unwrap_or(false);
    let stream = field(&map, "stream")?.unwrap_or(false);
    let generate = Generate { num_chars, samples, stop, sampler, probs, beam: beam.unwrap_or(0) };
    generate.validate().map_err(|e| match e {
        Error::InvalidConfig { name, reason } => {
            let name = name.trim_start_matches("--").replace('-', "_");
            ApiError::field(&name, format!("{name} {reason}"))
        }
        other => ApiError::body(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    Ok(Request { prefix, generate, stream })
}
