//! Channels (`/v1/channels`): settings, publishing, and following a
//! channel's Server-Sent Events with resume.

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use shoal_protocol::{ChannelInfoView, ChannelList, ChannelSettingsBody, PublishedView};

use crate::{Client, Lines, Result, api_error, seg, transport};

/// One Server-Sent Event of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEvent {
    /// `ready`, `message`, `binary` or `reset`.
    pub kind: String,
    /// `EPOCH:OFFSET`: the position to resume after.
    pub id: Option<String>,
    /// The event's data (JSON text; base64 for `binary`).
    pub data: String,
}

/// A channel's events as they come.
pub struct ChannelEvents {
    lines: Lines,
}

impl ChannelEvents {
    /// The next event; `None` when the node closed the stream.
    pub async fn next(&mut self) -> Result<Option<ChannelEvent>> {
        let mut event = ChannelEvent {
            kind: "message".into(),
            id: None,
            data: String::new(),
        };
        let mut has_data = false;
        while let Some(line) = self.lines.next_line().await? {
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if has_data {
                    return Ok(Some(event));
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.kind = value.to_string(),
                "id" => event.id = Some(value.to_string()),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                _ => {} // comments (keep-alives), retry
            }
        }
        Ok(None)
    }
}

impl Client {
    /// Changes a channel's settings (fields left `None` keep theirs).
    pub async fn configure_channel(
        &self,
        name: &str,
        settings: &ChannelSettingsBody,
    ) -> Result<ChannelInfoView> {
        self.json(
            Method::PUT,
            &format!("/v1/channels/{}", seg(name)),
            Some(settings),
        )
        .await
    }

    /// A channel's settings, position and presence.
    pub async fn channel(&self, name: &str) -> Result<ChannelInfoView> {
        self.json(
            Method::GET,
            &format!("/v1/channels/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// Channels by name prefix.
    pub async fn channels(&self, prefix: &str) -> Result<ChannelList> {
        self.json(
            Method::GET,
            &format!("/v1/channels?prefix={}", seg(prefix)),
            None::<&()>,
        )
        .await
    }

    /// Publishes a JSON message (`data` is JSON text).
    pub async fn publish(&self, name: &str, data: &str) -> Result<PublishedView> {
        let resp = self
            .http
            .post(format!("{}/v1/channels/{}/messages", self.base, seg(name)))
            .header(CONTENT_TYPE, "application/json")
            .body(data.to_string())
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        resp.json().await.map_err(transport)
    }

    /// Follows a channel's events, resuming after `since` (`EPOCH:OFFSET`)
    /// when given.
    pub async fn follow_channel(&self, name: &str, since: Option<&str>) -> Result<ChannelEvents> {
        let mut url = format!("/v1/channels/{}/events", seg(name));
        if let Some(since) = since {
            url = format!("{url}?since={}", seg(since));
        }
        let resp = self
            .http
            .get(format!("{}{url}", self.base))
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(ChannelEvents {
            lines: Lines {
                resp,
                buf: Vec::new(),
                done: false,
            },
        })
    }
}
