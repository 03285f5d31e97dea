//! Synchronous invokes, whose answer is the function's JSON result, its
//! failure, or the bytes of a `shoal.Response` it returned.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use shoal_protocol::{FUNCTION_ERROR_HEADER, INVOCATION_ID_HEADER, RESULT_HEADER};

use crate::{Client, Error, Invoked, Result, api_error, header, transport};

/// A `shoal.Response` a function returned, as the node answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub id: String,
    pub status: u16,
    pub content_type: String,
    /// The function's headers (names in lowercase), without those of the
    /// node (`content-type`, `content-length`, `date`, `shoal-*`).
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

impl Binary {
    /// Its JSON form, as records and job results hold it:
    /// `{"$response":{"status","content_type","headers","body_base64"}}`.
    pub fn to_json(&self) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::json!({"$response": {
            "status": self.status,
            "content_type": self.content_type,
            "headers": headers,
            "body_base64": STANDARD.encode(&self.body),
        }})
    }
}

/// What a synchronous invoke answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A JSON result, or the function's failure.
    Value(Invoked),
    /// A `shoal.Response`: bytes, status, content type, headers.
    Binary(Binary),
}

/// Headers of an answer that are the node's, not the function's.
const NODE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "date",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

impl Client {
    /// Invokes synchronously with `event` (JSON text); a function that
    /// returned a `shoal.Response` gives [`Answer::Binary`] with its bytes.
    pub async fn invoke_answer(&self, name: &str, event: &str) -> Result<Answer> {
        let resp = self.post_event(name, event, false).await?;
        let id = header(&resp, INVOCATION_ID_HEADER);
        if resp
            .headers()
            .get(RESULT_HEADER)
            .is_some_and(|v| v == "response")
        {
            let status = resp.status().as_u16();
            let content_type = header(&resp, CONTENT_TYPE.as_str());
            let headers = resp
                .headers()
                .iter()
                .filter(|(n, _)| {
                    !NODE_HEADERS.contains(&n.as_str()) && !n.as_str().starts_with("shoal-")
                })
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.bytes().await.map_err(transport)?;
            return Ok(Answer::Binary(Binary {
                id,
                status,
                content_type,
                headers,
                body,
            }));
        }
        let failed = resp.headers().contains_key(FUNCTION_ERROR_HEADER);
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        let result = if failed {
            Err(serde_json::from_slice(&bytes)
                .map_err(|e| Error::Transport(format!("bad failure body: {e}")))?)
        } else {
            Ok(serde_json::from_slice(&bytes)
                .map_err(|e| Error::Transport(format!("bad result body: {e}")))?)
        };
        Ok(Answer::Value(Invoked { id, result }))
    }
}
