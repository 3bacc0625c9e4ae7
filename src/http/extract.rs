//! Extractors whose every rejection is an `AppError`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::AppError;
use crate::auth::Caller;
use crate::feedback::{FeedbackKey, FieldError, OutputId, OutputKind};

/// A JSON body: `application/json` or `application/*+json` (else 415), at most
/// the body limit (else 413), parsed into `T` (else 400, naming the field).
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(request.headers()) {
            return Err(AppError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge
                } else {
                    AppError::invalid("the request body could not be read")
                }
            })?;
        parse_json(&bytes).map(Self)
    }
}

/// Parses a whole JSON document, reporting where a value has the wrong shape.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    // serde would also accept a struct written as a JSON array; bodies are
    // objects, so anything else is refused before it gets that far.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(AppError::invalid(
                "the request body is empty; expected a JSON object",
            ));
        }
        Some(_) => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
                return Err(AppError::invalid("the request body must be a JSON object"));
            }
            return Err(AppError::invalid("malformed JSON: expected a JSON object"));
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() && path != "." {
            AppError::from(FieldError::new(path, inner.to_string()))
        } else if inner.is_data() {
            AppError::invalid(format!("invalid request body: {inner}"))
        } else {
            AppError::invalid(format!("malformed JSON: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|err| AppError::invalid(format!("malformed JSON: {err}")))?;
    Ok(value)
}

/// `application/json` or `application/<anything>+json`, case-insensitive,
/// parameters such as `charset=utf-8` allowed.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application")
        && (subtype == "json" || (subtype.ends_with("+json") && subtype.len() > "+json".len()))
}

/// The path segment of batch get, which is also a valid entry id.
pub(crate) const BATCH_SEGMENT: &str = "batch";

/// The `{kind}` segment of a collection path; an unknown kind is 404.
#[derive(Debug)]
pub(crate) struct KindParam(pub(crate) OutputKind);

/// The `{kind}/{id}` segments of an entry path: unknown kind 404, bad id 400.
#[derive(Debug)]
pub(crate) struct EntryParams(pub(crate) FeedbackKey);

async fn path_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<Vec<(String, String)>, AppError> {
    Path::<Vec<(String, String)>>::from_request_parts(parts, state)
        .await
        .map(|Path(params)| params)
        .map_err(|_| AppError::invalid("the path is not valid UTF-8 once percent-decoded"))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find_map(|(key, value)| (key == name).then_some(value.as_str()))
}

fn parse_kind(params: &[(String, String)]) -> Result<OutputKind, AppError> {
    param(params, "kind")
        .and_then(OutputKind::parse)
        .ok_or(AppError::NotFound("no such route"))
}

impl<S: Send + Sync> FromRequestParts<S> for KindParam {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = path_params(parts, state).await?;
        Ok(Self(parse_kind(&params)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for EntryParams {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = path_params(parts, state).await?;
        let kind = parse_kind(&params)?;
        // On `/{kind}/batch` the static segment is the id: GET and PUT there
        // address an entry named `batch` (API.md); only POST is batch get.
        let id = OutputId::parse(param(&params, "id").unwrap_or(BATCH_SEGMENT))?;
        let key = FeedbackKey { kind, id };
        // Left by `Require`: a token may address only its own output (403
        // before the body is read).
        if let Some(caller) = parts.extensions.get::<Caller>() {
            caller.authorize_output(&key)?;
        }
        Ok(Self(key))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_bad_query_string_reports_at_most_20_details_and_counts_the_rest(
            names in proptest::collection::vec("[a-z]{1,6}", 0..200),
        ) {
            let raw = names.iter().map(|name| format!("{name}=")).collect::<Vec<_>>().join("&");
            let allowed = ["order", "rating"];
            let bad = names.len();
            match QueryParams::parse(Some(&raw), &allowed) {
                Ok(_) => prop_assert_eq!(bad, 0),
                Err(AppError::InvalidRequest { message, details }) => {
                    prop_assert_eq!(details.len(), bad.min(MAX_QUERY_ERRORS));
                    let omitted = format!("; and {} more problems", bad - details.len());
                    prop_assert_eq!(message.contains(&omitted), bad > MAX_QUERY_ERRORS);
                }
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }

    fn with_content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn json_media_types_are_recognised() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
            "application/vnd.api+JSON;charset=UTF-8",
        ] {
            assert!(has_json_content_type(&with_content_type(ok)), "{ok}");
        }
        for bad in [
            "text/json",
            "text/plain",
            "application/xml",
            "application/+json",
            "json",
        ] {
            assert!(!has_json_content_type(&with_content_type(bad)), "{bad}");
        }
        assert!(!has_json_content_type(&HeaderMap::new()));
    }
}

/// The most `details` one bad query string reports; the message says how
/// many more problems there were.
const MAX_QUERY_ERRORS: usize = 20;

/// A query string held to API.md's rules: only `allowed` names, each at most
/// once, none empty. Values are percent-decoded.
#[derive(Debug, Default)]
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, AppError> {
        let mut params: Vec<(String, String)> = Vec::new();
        let mut errors = Vec::new();
        let mut omitted = 0_usize;
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let is_unknown = !allowed.contains(&name.as_ref());
            let problem = if is_unknown {
                "unknown query parameter"
            } else if params.iter().any(|(seen, _)| *seen == name) {
                "must be given at most once"
            } else if value.is_empty() {
                "must not be empty"
            } else {
                params.push((name.into_owned(), value.into_owned()));
                continue;
            };
            // A flood of bad parameters costs one bounded answer.
            if errors.len() == MAX_QUERY_ERRORS {
                omitted += 1;
                continue;
            }
            let message = if is_unknown {
                format!("{problem}; allowed: {}", allowed.join(", "))
            } else {
                problem.to_owned()
            };
            errors.push(FieldError::new(name.into_owned(), message));
        }
        if errors.is_empty() {
            return Ok(Self(params));
        }
        let mut error = AppError::from(errors);
        if let AppError::InvalidRequest { message, .. } = &mut error {
            if omitted > 0 {
                use std::fmt::Write;
                let _ = write!(
                    message,
                    "; and {omitted} more problems with query parameters (not listed)"
                );
            }
        }
        Err(error)
    }

    /// The value of `name`, if given.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        param(&self.0, name)
    }
}
