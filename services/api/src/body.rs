//! Bodies in and out: JSON answers and errors, NDJSON log streams, the
//! snapshot's byte stream, bounded JSON requests and the streamed upload.

use crate::backend::{ByteStream, NodeError};
use crate::types::{ErrorBody, LogLine};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// Why a streamed response was cut short.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type ResponseBody = UnsyncBoxBody<Bytes, BodyError>;

pub const JSON: &str = "application/json";
pub const NDJSON: &str = "application/x-ndjson";
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The largest JSON request body accepted; larger ones are answered 413.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// A request that failed before or in the node, as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), allow: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let mut response = json(self.status, &ErrorBody { code: self.code.to_owned(), message: self.message });
        if let Some(allow) = self.allow.and_then(|allow| HeaderValue::from_str(&allow).ok()) {
            response.headers_mut().insert(hyper::header::ALLOW, allow);
        }
        response
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> ApiError {
        let (status, code) = match &error {
            NodeError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            NodeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            NodeError::InvalidConfig(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-config"),
            NodeError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            NodeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            NodeError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    UnsyncBoxBody::new(Full::new(bytes.into()).map_err(|never| match never {}))
}

fn with_type(status: StatusCode, content_type: &'static str, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `value` as a JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, JSON, full(bytes)),
        Err(error) => {
            tracing::error!(%error, "encoding an answer as JSON");
            with_type(
                StatusCode::INTERNAL_SERVER_ERROR,
                JSON,
                full(r#"{"code":"internal","message":"encoding the answer as JSON failed"}"#),
            )
        }
    }
}

/// Reads a JSON request body of at most [`MAX_JSON_BODY`] bytes.
pub async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = match Limited::new(body, MAX_JSON_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("reading the request body: it is larger than {MAX_JSON_BODY} bytes"),
            ));
        }
        Err(error) => return Err(ApiError::bad_request(format!("reading the request body: {error}"))),
    };
    serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::bad_request(format!("reading the request's JSON: {error}")))
}

/// Log lines as NDJSON, one frame per line: first the backlog, then (when
/// following) each live line as it comes, until the source closes. Dropping
/// the body (the client went away) drops the live receiver, which is how
/// the source learns its follower is gone.
pub struct LogBody {
    backlog: std::vec::IntoIter<LogLine>,
    live: Option<mpsc::Receiver<LogLine>>,
}

impl LogBody {
    pub fn response(backlog: Vec<LogLine>, live: Option<mpsc::Receiver<LogLine>>) -> Response<ResponseBody> {
        let body = LogBody { backlog: backlog.into_iter(), live };
        with_type(StatusCode::OK, NDJSON, UnsyncBoxBody::new(body))
    }
}

fn ndjson_line(line: &LogLine) -> Result<Frame<Bytes>, BodyError> {
    let mut bytes = serde_json::to_vec(line)?;
    bytes.push(b'\n');
    Ok(Frame::data(Bytes::from(bytes)))
}

impl Body for LogBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(line) = this.backlog.next() {
            return Poll::Ready(Some(ndjson_line(&line)));
        }
        let Some(live) = this.live.as_mut() else { return Poll::Ready(None) };
        match ready!(live.poll_recv(cx)) {
            Some(line) => Poll::Ready(Some(ndjson_line(&line))),
            None => {
                this.live = None;
                Poll::Ready(None)
            }
        }
    }
}

/// The chunks of a [`ByteStream`]; a chunk that is an error cuts the
/// response, so the client cannot take a partial snapshot for a whole one.
pub struct ByteStreamBody(ByteStream);

impl ByteStreamBody {
    pub fn response(stream: ByteStream) -> Response<ResponseBody> {
        with_type(StatusCode::OK, OCTET_STREAM, UnsyncBoxBody::new(ByteStreamBody(stream)))
    }
}

impl Body for ByteStreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match ready!(self.get_mut().0.poll_recv(cx)) {
            Some(Ok(chunk)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk))))),
            Some(Err(error)) => {
                tracing::warn!(%error, "streaming a download; cutting the response");
                Poll::Ready(Some(Err(Box::new(error))))
            }
            None => Poll::Ready(None),
        }
    }
}

/// A request body read as it arrives, for uploads.
pub struct UploadReader {
    body: Incoming,
    pending: Bytes,
}

impl UploadReader {
    pub fn new(body: Incoming) -> UploadReader {
        UploadReader { body, pending: Bytes::new() }
    }
}

impl AsyncRead for UploadReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                // Trailers carry no data.
                Some(Ok(frame)) => this.pending = frame.into_data().unwrap_or_default(),
                Some(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let count = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(count));
        Poll::Ready(Ok(()))
    }
}

/// The pairs of a query string, `+` and `%XX` decoded.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(query) = query else { return Ok(Vec::new()) };
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_decode(&spaced)
            .ok_or_else(|| ApiError::bad_request(format!("reading the query: bad escape in {text:?}")))
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

pub fn percent_decode_segment(segment: &str) -> Option<String> {
    percent_decode(segment)
}

/// `true` or `false`, nothing else.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!("reading the query parameter {name}: {value:?} is not true or false"))),
    }
}
