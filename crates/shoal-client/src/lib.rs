//! A typed HTTP client for a Shoal node, over `shoal-protocol`.
//!
//! Used by the CLI, the tests and the examples; nothing else hand-rolls HTTP.

mod archive;
mod blobs;
mod channels;
mod invoke;
mod sites;
mod usage;

pub use archive::pack_dir;
pub use blobs::{BlobDownload, BlobHead, ByteRange, Progress, UPLOAD_PIECE};
pub use channels::{ChannelEvent, ChannelEvents};
pub use invoke::{Answer, Binary};
pub use reqwest::Body;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
pub use sites::{SiteDeploy, pack_site};

pub use shoal_protocol as protocol;
use shoal_protocol::{
    ARCHIVE_CONTENT_TYPE, Accepted, CreateToken, CreatedToken, Deleted, ErrorBody, ErrorCode,
    FunctionFailure, FunctionList, FunctionView, Health, InvocationView, LogsView, SecretList,
    SecretView, SetSecret, TokenList,
};
use shoal_protocol::{
    CategoryList, CategoryView, Count, CreateCategory, DeadLetterPage, DeadLetterSelection,
    DocPage, KvEntryView, KvList, LimiterList, LimiterView, NDJSON_CONTENT_TYPE, PutLimiter,
    PutQueue, QueryRequest, QueueList, QueueStats, QueueView, SendMessage, SendRequest, Sent,
    Written,
};
use shoal_protocol::{CreateUser, DeletedUser, PatchUser, UserList, UserView};

pub type Result<T> = std::result::Result<T, Error>;

/// How [`Client::kv_set`] writes: a ttl, and at most one condition.
#[derive(Debug, Clone, Default)]
pub struct KvSetOptions {
    /// Expire after this long (1 ms to 10 years); `None`: never.
    pub ttl: Option<std::time::Duration>,
    /// Only if the key is absent.
    pub nx: bool,
    /// Only if the key is present.
    pub xx: bool,
    /// Only if the key is at this version (compare-and-set).
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with an error body.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// The node could not be reached or answered something unreadable.
    #[error("{0}")]
    Transport(String),
}

impl Error {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            Error::Transport(_) => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::Transport(_) => None,
        }
    }
}

/// Whether a removal may lose data (`?force=true` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Refused (409 `force_required`) when the thing holds data.
    IfEmpty,
    /// Removes it with what it holds.
    Force,
}

impl Removal {
    fn query(self) -> &'static str {
        match self {
            Removal::IfEmpty => "",
            Removal::Force => "?force=true",
        }
    }
}

/// The result of a synchronous invocation.
#[derive(Debug, Clone)]
pub struct Invoked {
    pub id: String,
    /// The function's return value, or how it failed.
    pub result: std::result::Result<Value, FunctionFailure>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// `url` like `http://127.0.0.1:7700`, `127.0.0.1:7700` or
    /// `localhost:7700` (see [`node_url`]); `token` is the bearer secret.
    pub fn new(url: &str, token: Option<&str>) -> Result<Client> {
        let url = node_url(url)?;
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            let v = HeaderValue::from_str(&format!("Bearer {}", t.trim())).map_err(|_| {
                Error::Transport("the token contains characters not allowed in a header".into())
            })?;
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Client { http, base: url })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub async fn health(&self) -> Result<Health> {
        self.json(Method::GET, "/healthz", None::<&()>).await
    }

    /// Deploys a function from a tar archive (see [`pack_dir`]).
    pub async fn deploy(&self, archive: Vec<u8>) -> Result<FunctionView> {
        let resp = self
            .http
            .post(format!("{}/v1/functions", self.base))
            .header(CONTENT_TYPE, ARCHIVE_CONTENT_TYPE)
            .body(archive)
            .send()
            .await
            .map_err(transport)?;
        decode(resp).await
    }

    /// Checks that a function archive loads in a real worker, without
    /// recording or activating anything (`?dry_run=true`).
    pub async fn deploy_dry_run(&self, archive: Vec<u8>) -> Result<FunctionView> {
        let resp = self
            .http
            .post(format!("{}/v1/functions?dry_run=true", self.base))
            .header(CONTENT_TYPE, ARCHIVE_CONTENT_TYPE)
            .body(archive)
            .send()
            .await
            .map_err(transport)?;
        decode(resp).await
    }

    /// A function's versions, which one is live, and its aliases.
    pub async fn function_versions(&self, name: &str) -> Result<shoal_protocol::FunctionVersions> {
        self.json(
            Method::GET,
            &format!("/v1/functions/{}/versions", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// The files of a version as deployed (the live one by default): the
    /// text of each UTF-8 file up to 1 MiB, the size of every file.
    pub async fn function_files(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<shoal_protocol::FunctionFilesView> {
        let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
        self.json(
            Method::GET,
            &format!("/v1/functions/{}/files{query}", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// Makes `version` (by default the one before the live one) live;
    /// returns the version now live.
    pub async fn rollback(&self, name: &str, version: Option<u64>) -> Result<FunctionView> {
        self.json(
            Method::POST,
            &format!("/v1/functions/{}/rollback", seg(name)),
            Some(&shoal_protocol::RollbackRequest { version }),
        )
        .await
    }

    /// Points `alias` of a function at `version`.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: u64,
    ) -> Result<shoal_protocol::AliasView> {
        self.json(
            Method::PUT,
            &format!("/v1/functions/{}/aliases/{}", seg(name), seg(alias)),
            Some(&shoal_protocol::AliasRequest { version }),
        )
        .await
    }

    pub async fn remove_alias(&self, name: &str, alias: &str) -> Result<()> {
        self.delete(&format!(
            "/v1/functions/{}/aliases/{}",
            seg(name),
            seg(alias)
        ))
        .await
    }

    pub async fn functions(&self) -> Result<Vec<FunctionView>> {
        let list: FunctionList = self.json(Method::GET, "/v1/functions", None::<&()>).await?;
        Ok(list.functions)
    }

    pub async fn function(&self, name: &str) -> Result<FunctionView> {
        self.json(
            Method::GET,
            &format!("/v1/functions/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn remove_function(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/functions/{}", seg(name))).await
    }

    /// Invokes synchronously with `event` (JSON text) and waits for the
    /// result. A `shoal.Response` the function returned comes as its JSON
    /// form (`{"$response": ..}`); [`Client::invoke_answer`] gives its bytes.
    pub async fn invoke(&self, name: &str, event: &str) -> Result<Invoked> {
        match self.invoke_answer(name, event).await? {
            Answer::Value(invoked) => Ok(invoked),
            Answer::Binary(binary) => Ok(Invoked {
                id: binary.id.clone(),
                result: Ok(binary.to_json()),
            }),
        }
    }

    /// Queues an invocation; returns its id.
    pub async fn invoke_async(&self, name: &str, event: &str) -> Result<String> {
        let resp = self.post_event(name, event, true).await?;
        let accepted: Accepted = decode(resp).await?;
        Ok(accepted.id)
    }

    async fn post_event(
        &self,
        name: &str,
        event: &str,
        is_async: bool,
    ) -> Result<reqwest::Response> {
        let mode = if is_async { "?mode=async" } else { "" };
        self.http
            .post(format!(
                "{}/v1/functions/{}/invoke{mode}",
                self.base,
                seg(name)
            ))
            .header(CONTENT_TYPE, "application/json")
            .body(event.to_string())
            .send()
            .await
            .map_err(transport)
    }

    pub async fn invocation(&self, id: &str) -> Result<InvocationView> {
        self.json(
            Method::GET,
            &format!("/v1/invocations/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn logs(&self, id: &str) -> Result<String> {
        let logs: LogsView = self
            .json(
                Method::GET,
                &format!("/v1/invocations/{}/logs", seg(id)),
                None::<&()>,
            )
            .await?;
        Ok(logs.logs)
    }

    /// A page of invocations, newest first. `filters` are the `(name,
    /// value)` pairs of `GET /v1/invocations`: `function`, `status`, `mode`,
    /// `since`, `until`, `cursor`, `limit`.
    pub async fn list_invocations(
        &self,
        filters: &[(&str, &str)],
    ) -> Result<shoal_protocol::InvocationList> {
        let query: Vec<String> = filters
            .iter()
            .map(|(k, v)| format!("{}={}", seg(k), seg(v)))
            .collect();
        let path = if query.is_empty() {
            "/v1/invocations".to_string()
        } else {
            format!("/v1/invocations?{}", query.join("&"))
        };
        self.json(Method::GET, &path, None::<&()>).await
    }

    /// Runs invocation `id` again as a new asynchronous invocation (of the
    /// live version, or of the one that ran it); returns the new id.
    pub async fn replay(&self, id: &str, same_version: bool) -> Result<String> {
        let q = if same_version { "?version=same" } else { "" };
        let accepted: Accepted = self
            .json(
                Method::POST,
                &format!("/v1/invocations/{}/replay{q}", seg(id)),
                None::<&()>,
            )
            .await?;
        Ok(accepted.id)
    }

    /// The logs of a function's latest `limit` invocations, oldest first.
    pub async fn function_logs(
        &self,
        name: &str,
        limit: Option<u32>,
    ) -> Result<shoal_protocol::FunctionLogs> {
        let mut path = format!("/v1/functions/{}/logs", seg(name));
        if let Some(n) = limit {
            path += &format!("?limit={n}");
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    /// Follows a function's logs: the SSE lines of
    /// `GET /v1/functions/{name}/logs?follow=true` (`event: invocation`
    /// with an `InvocationLogs`, `event: lagged` with a `LogsLagged`), as
    /// they arrive, until the node closes the stream.
    pub async fn follow_logs(&self, name: &str, limit: Option<u32>) -> Result<Lines> {
        let mut url = format!("{}/v1/functions/{}/logs?follow=true", self.base, seg(name));
        if let Some(n) = limit {
            url += &format!("&limit={n}");
        }
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(Lines {
            resp,
            buf: Vec::new(),
            done: false,
        })
    }

    /// The data directory's size and the number of stored invocations.
    pub async fn stats(&self) -> Result<shoal_protocol::NodeStats> {
        self.json(Method::GET, "/v1/stats", None::<&()>).await
    }

    /// Every node sharing the node's store, the node answering first
    /// (`this`), each `alive` or `lost`.
    pub async fn nodes(&self) -> Result<Vec<shoal_protocol::NodeView>> {
        let list: shoal_protocol::NodeList =
            self.json(Method::GET, "/v1/nodes", None::<&()>).await?;
        Ok(list.nodes)
    }

    /// Every `[[schedule]]` of the live versions, with its next fire times.
    pub async fn schedules(&self) -> Result<Vec<shoal_protocol::ScheduleView>> {
        let list: shoal_protocol::ScheduleList =
            self.json(Method::GET, "/v1/schedules", None::<&()>).await?;
        Ok(list.schedules)
    }

    /// Pauses (`paused`) or resumes schedule `index` of `function`, on
    /// every node; answers the schedule.
    pub async fn pause_schedule(
        &self,
        function: &str,
        index: u64,
        paused: bool,
    ) -> Result<shoal_protocol::ScheduleView> {
        let action = if paused { "pause" } else { "resume" };
        self.json(
            Method::POST,
            &format!("/v1/schedules/{}/{index}/{action}", seg(function)),
            None::<&()>,
        )
        .await
    }

    /// A page of a schedule's fired ticks, newest first (`cursor`: the
    /// previous page's).
    pub async fn schedule_history(
        &self,
        function: &str,
        index: u64,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<shoal_protocol::ScheduleHistory> {
        let mut path = format!(
            "/v1/schedules/{}/{index}/history?limit={limit}",
            seg(function)
        );
        if let Some(c) = cursor {
            path += &format!("&cursor={}", seg(c));
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    /// Every `[[trigger]]` of the live versions.
    pub async fn triggers(&self) -> Result<Vec<shoal_protocol::TriggerView>> {
        let list: shoal_protocol::TriggerList =
            self.json(Method::GET, "/v1/triggers", None::<&()>).await?;
        Ok(list.items)
    }

    pub async fn create_token(&self, role: &str, name: Option<&str>) -> Result<CreatedToken> {
        self.create_scoped_token(role, name, Vec::new()).await
    }

    /// Creates a token limited to channel scopes (`subscribe:board.*`).
    pub async fn create_scoped_token(
        &self,
        role: &str,
        name: Option<&str>,
        channels: Vec<String>,
    ) -> Result<CreatedToken> {
        let req = CreateToken {
            role: role.to_string(),
            name: name.map(str::to_string),
            channels,
            user: None,
            scopes: Vec::new(),
        };
        self.json(Method::POST, "/v1/tokens", Some(&req)).await
    }

    /// Creates a token of `user` (or of no user) limited to `scopes`
    /// (`function:resize-*`, `category:photos`, `queue:jobs`,
    /// `channel:subscribe:board.*`; none = everything its role allows).
    pub async fn create_user_token(
        &self,
        role: &str,
        name: Option<&str>,
        user: Option<&str>,
        scopes: Vec<String>,
    ) -> Result<CreatedToken> {
        let req = CreateToken {
            role: role.to_string(),
            name: name.map(str::to_string),
            channels: Vec::new(),
            user: user.map(str::to_string),
            scopes,
        };
        self.json(Method::POST, "/v1/tokens", Some(&req)).await
    }

    // ---- users ----

    /// Creates a user with a role (`reader`, `invoker`, `developer`, `admin`).
    pub async fn create_user(&self, name: &str, role: &str) -> Result<UserView> {
        let req = CreateUser {
            name: name.to_string(),
            role: role.to_string(),
        };
        self.json(Method::POST, "/v1/users", Some(&req)).await
    }

    pub async fn users(&self) -> Result<UserList> {
        self.json(Method::GET, "/v1/users", None::<&()>).await
    }

    pub async fn user(&self, name: &str) -> Result<UserView> {
        self.json(
            Method::GET,
            &format!("/v1/users/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// Changes a user's role; its tokens act with at most the new one.
    pub async fn set_user_role(&self, name: &str, role: &str) -> Result<UserView> {
        let req = PatchUser {
            role: role.to_string(),
        };
        self.json(
            Method::PATCH,
            &format!("/v1/users/{}", seg(name)),
            Some(&req),
        )
        .await
    }

    /// Deletes a user and revokes its tokens.
    pub async fn delete_user(&self, name: &str) -> Result<DeletedUser> {
        self.json(
            Method::DELETE,
            &format!("/v1/users/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn tokens(&self) -> Result<TokenList> {
        self.json(Method::GET, "/v1/tokens", None::<&()>).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.delete(&format!("/v1/tokens/{}", seg(id))).await
    }

    /// A raw GET returning the body text (for `/metrics`, `/v1/openapi.json`).
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        resp.text().await.map_err(transport)
    }

    // ---- categories ----

    pub async fn create_category(&self, name: &str, shards: Option<u32>) -> Result<CategoryView> {
        let req = CreateCategory {
            name: name.to_string(),
            shards,
        };
        self.json(Method::POST, "/v1/categories", Some(&req)).await
    }

    pub async fn categories(&self) -> Result<Vec<CategoryView>> {
        let list: CategoryList = self
            .json(Method::GET, "/v1/categories", None::<&()>)
            .await?;
        Ok(list.categories)
    }

    pub async fn category(&self, name: &str) -> Result<CategoryView> {
        self.json(
            Method::GET,
            &format!("/v1/categories/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// Deletes an empty category (409 `force_required` when it holds
    /// documents).
    pub async fn delete_category(&self, name: &str) -> Result<()> {
        self.delete_category_with(name, Removal::IfEmpty).await
    }

    /// Deletes a category; with `Removal::Force`, with its documents.
    pub async fn delete_category_with(&self, name: &str, removal: Removal) -> Result<()> {
        self.delete(&format!("/v1/categories/{}{}", seg(name), removal.query()))
            .await
    }

    /// Writes documents (a JSON array or NDJSON body, possibly streamed).
    /// Atomic: all or none.
    pub async fn write_docs(
        &self,
        category: &str,
        body: impl Into<reqwest::Body>,
        ndjson: bool,
        return_ids: bool,
    ) -> Result<Written> {
        let ct = if ndjson {
            NDJSON_CONTENT_TYPE
        } else {
            "application/json"
        };
        let resp = self
            .http
            .post(format!(
                "{}/v1/categories/{}/docs?return_ids={return_ids}",
                self.base,
                seg(category)
            ))
            .header(CONTENT_TYPE, ct)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        decode(resp).await
    }

    pub async fn get_doc(&self, category: &str, id: &str) -> Result<Value> {
        self.json(
            Method::GET,
            &format!("/v1/categories/{}/docs/{}", seg(category), seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn put_doc(&self, category: &str, id: &str, doc: &Value) -> Result<Written> {
        self.json(
            Method::PUT,
            &format!("/v1/categories/{}/docs/{}", seg(category), seg(id)),
            Some(doc),
        )
        .await
    }

    pub async fn delete_doc(&self, category: &str, id: &str) -> Result<()> {
        self.delete(&format!(
            "/v1/categories/{}/docs/{}",
            seg(category),
            seg(id)
        ))
        .await
    }

    pub async fn scan(
        &self,
        category: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DocPage> {
        let mut path = format!("/v1/categories/{}/docs?limit={limit}", seg(category));
        if let Some(c) = cursor {
            path += &format!("&cursor={}", seg(c));
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    /// Starts a query. With `sse`, the lines are SSE events (`event:` and
    /// `data:` lines); otherwise NDJSON lines (`{"value"}`, then `{"done"}`
    /// or `{"error"}`).
    pub async fn query(
        &self,
        category: &str,
        function: &str,
        skip_errors: bool,
        sse: bool,
    ) -> Result<Lines> {
        let req = QueryRequest {
            function: function.to_string(),
            skip_errors,
        };
        let mut builder = self
            .http
            .post(format!(
                "{}/v1/categories/{}/query",
                self.base,
                seg(category)
            ))
            .json(&req);
        if sse {
            builder = builder.header(reqwest::header::ACCEPT, "text/event-stream");
        }
        let resp = builder.send().await.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(Lines {
            resp,
            buf: Vec::new(),
            done: false,
        })
    }

    // ---- queues ----

    pub async fn put_queue(&self, name: &str, settings: &PutQueue) -> Result<QueueView> {
        self.json(
            Method::PUT,
            &format!("/v1/queues/{}", seg(name)),
            Some(settings),
        )
        .await
    }

    pub async fn queues(&self) -> Result<Vec<QueueView>> {
        let list: QueueList = self.json(Method::GET, "/v1/queues", None::<&()>).await?;
        Ok(list.queues)
    }

    pub async fn queue(&self, name: &str) -> Result<QueueView> {
        self.json(
            Method::GET,
            &format!("/v1/queues/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    /// Deletes a queue with no messages, dead letters or subscriber (409
    /// `force_required` otherwise).
    pub async fn delete_queue(&self, name: &str) -> Result<()> {
        self.delete_queue_with(name, Removal::IfEmpty).await
    }

    /// Deletes a queue; with `Removal::Force`, with what it holds.
    pub async fn delete_queue_with(&self, name: &str, removal: Removal) -> Result<()> {
        self.delete(&format!("/v1/queues/{}{}", seg(name), removal.query()))
            .await
    }

    /// Sends messages (durable when this returns); their ids in order.
    pub async fn send(&self, queue: &str, messages: Vec<SendMessage>) -> Result<Vec<String>> {
        Ok(self.send_messages(queue, messages).await?.ids)
    }

    /// Sends messages; the answer also says which were duplicates.
    pub async fn send_messages(&self, queue: &str, messages: Vec<SendMessage>) -> Result<Sent> {
        let req = SendRequest::Batch { messages };
        self.json(
            Method::POST,
            &format!("/v1/queues/{}/messages", seg(queue)),
            Some(&req),
        )
        .await
    }

    pub async fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        let mut path = format!("/v1/queues/{}/dead-letters?limit={limit}", seg(queue));
        if let Some(a) = after {
            path += &format!("&after={}", seg(a));
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    pub async fn redrive(&self, queue: &str, ids: Option<Vec<String>>) -> Result<u64> {
        let c: Count = self
            .json(
                Method::POST,
                &format!("/v1/queues/{}/dead-letters/redrive", seg(queue)),
                Some(&DeadLetterSelection { ids }),
            )
            .await?;
        Ok(c.count)
    }

    pub async fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Result<u64> {
        let c: Count = self
            .json(
                Method::POST,
                &format!("/v1/queues/{}/dead-letters/purge", seg(queue)),
                Some(&DeadLetterSelection { ids }),
            )
            .await?;
        Ok(c.count)
    }

    /// Deletes a queue's waiting messages: with `Removal::IfEmpty`, refused
    /// (409 `force_required`) when there are any.
    pub async fn purge_queue(&self, queue: &str, removal: Removal) -> Result<u64> {
        let c: Count = self
            .json(
                Method::POST,
                &format!("/v1/queues/{}/purge{}", seg(queue), removal.query()),
                None::<&()>,
            )
            .await?;
        Ok(c.count)
    }

    pub async fn queue_stats(&self, queue: &str, since_ms: Option<u64>) -> Result<QueueStats> {
        let mut path = format!("/v1/queues/{}/stats", seg(queue));
        if let Some(s) = since_ms {
            path += &format!("?since={s}");
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    // ---- secrets ----

    /// Sets a secret; the answer never carries the value.
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<SecretView> {
        let req = SetSecret {
            value: value.to_string(),
        };
        self.json(
            Method::PUT,
            &format!("/v1/secrets/{}", seg(name)),
            Some(&req),
        )
        .await
    }

    pub async fn secrets(&self) -> Result<Vec<SecretView>> {
        let list: SecretList = self.json(Method::GET, "/v1/secrets", None::<&()>).await?;
        Ok(list.secrets)
    }

    pub async fn remove_secret(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/secrets/{}", seg(name))).await
    }

    // ---- notifications ----

    /// Creates or replaces a notification; the answer carries its secret
    /// only when the node generated it (shown this once).
    pub async fn put_notification(
        &self,
        name: &str,
        req: &shoal_protocol::PutNotification,
    ) -> Result<shoal_protocol::NotificationView> {
        self.json(
            Method::PUT,
            &format!("/v1/notifications/{}", seg(name)),
            Some(req),
        )
        .await
    }

    pub async fn notifications(&self) -> Result<Vec<shoal_protocol::NotificationView>> {
        let list: shoal_protocol::NotificationList = self
            .json(Method::GET, "/v1/notifications", None::<&()>)
            .await?;
        Ok(list.items)
    }

    pub async fn notification(&self, name: &str) -> Result<shoal_protocol::NotificationView> {
        self.json(
            Method::GET,
            &format!("/v1/notifications/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn remove_notification(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/notifications/{}", seg(name)))
            .await
    }

    /// A page of the delivery log, newest first, of one notification
    /// and/or with one status (`pending`, `delivered`, `failed`).
    pub async fn notification_deliveries(
        &self,
        name: Option<&str>,
        status: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<shoal_protocol::DeliveryList> {
        let mut path = format!("/v1/notifications/deliveries?limit={limit}");
        if let Some(n) = name {
            path += &format!("&name={}", seg(n));
        }
        if let Some(s) = status {
            path += &format!("&status={}", seg(s));
        }
        if let Some(c) = cursor {
            path += &format!("&cursor={}", seg(c));
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    // ---- key-value store ----

    /// The live entry of `key` (`key_not_found` when absent or expired).
    pub async fn kv_get(&self, key: &str) -> Result<KvEntryView> {
        self.json(Method::GET, &format!("/v1/kv/{}", seg(key)), None::<&()>)
            .await
    }

    /// Stores `value` under `key`, when `opts`' condition holds
    /// (`key_conflict` otherwise, naming the current version).
    pub async fn kv_set(
        &self,
        key: &str,
        value: &Value,
        opts: &KvSetOptions,
    ) -> Result<KvEntryView> {
        let mut query = Vec::new();
        if let Some(ttl) = opts.ttl {
            query.push(format!("ttl={}ms", ttl.as_millis()));
        }
        if opts.nx {
            query.push("nx=true".to_string());
        }
        if opts.xx {
            query.push("xx=true".to_string());
        }
        if let Some(v) = opts.version {
            query.push(format!("version={v}"));
        }
        let mut path = format!("/v1/kv/{}", seg(key));
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        self.json(Method::PUT, &path, Some(value)).await
    }

    /// Adds `by` to the integer value of `key` (absent counts as 0).
    pub async fn kv_incr(&self, key: &str, by: i64) -> Result<KvEntryView> {
        self.json(
            Method::POST,
            &format!("/v1/kv/{}/incr?by={by}", seg(key)),
            None::<&()>,
        )
        .await
    }

    /// Deletes `key` (only at `version` when given).
    pub async fn kv_delete(&self, key: &str, version: Option<u64>) -> Result<()> {
        let mut path = format!("/v1/kv/{}", seg(key));
        if let Some(v) = version {
            path = format!("{path}?version={v}");
        }
        self.delete_no_content(&path).await
    }

    /// A page of live entries whose key starts with `prefix`, after
    /// `cursor` (the previous page's `next`).
    pub async fn kv_list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<KvList> {
        let mut path = format!("/v1/kv?prefix={}&limit={limit}", seg(prefix));
        if let Some(c) = cursor {
            path = format!("{path}&cursor={}", seg(c));
        }
        self.json(Method::GET, &path, None::<&()>).await
    }

    // ---- rate limiters ----

    pub async fn put_limiter(
        &self,
        name: &str,
        per_second: f64,
        burst: Option<u32>,
    ) -> Result<LimiterView> {
        let req = PutLimiter { per_second, burst };
        self.json(
            Method::PUT,
            &format!("/v1/limiters/{}", seg(name)),
            Some(&req),
        )
        .await
    }

    pub async fn limiters(&self) -> Result<Vec<LimiterView>> {
        let list: LimiterList = self.json(Method::GET, "/v1/limiters", None::<&()>).await?;
        Ok(list.limiters)
    }

    pub async fn remove_limiter(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/limiters/{}", seg(name))).await
    }

    /// Starts a job: one asynchronous invocation of `function` per event,
    /// then `then` once all have finished. Returns the job's id.
    pub async fn start_job(
        &self,
        function: &str,
        events: Vec<Value>,
        then: Option<&str>,
    ) -> Result<String> {
        let req = shoal_protocol::StartJob {
            function: function.to_string(),
            events,
            then: then.map(str::to_string),
            max_in_flight: None,
        };
        let started: shoal_protocol::JobStarted =
            self.json(Method::POST, "/v1/jobs", Some(&req)).await?;
        Ok(started.job)
    }

    pub async fn job(&self, id: &str) -> Result<shoal_protocol::JobView> {
        self.json(Method::GET, &format!("/v1/jobs/{}", seg(id)), None::<&()>)
            .await
    }

    /// A page of jobs, newest first: at most `limit` (the node's default
    /// when `None`), older than `cursor` (a page's `next`).
    pub async fn list_jobs(
        &self,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<shoal_protocol::JobList> {
        let mut query = Vec::new();
        if let Some(c) = cursor {
            query.push(format!("cursor={}", seg(c)));
        }
        if let Some(n) = limit {
            query.push(format!("limit={n}"));
        }
        let path = if query.is_empty() {
            "/v1/jobs".to_string()
        } else {
            format!("/v1/jobs?{}", query.join("&"))
        };
        self.json(Method::GET, &path, None::<&()>).await
    }

    /// A page of a job's results from child index `offset`.
    pub async fn job_results(
        &self,
        id: &str,
        offset: u64,
        limit: usize,
    ) -> Result<shoal_protocol::JobResults> {
        self.json(
            Method::GET,
            &format!("/v1/jobs/{}/results?offset={offset}&limit={limit}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<shoal_protocol::JobView> {
        self.json(
            Method::POST,
            &format!("/v1/jobs/{}/cancel", seg(id)),
            None::<&()>,
        )
        .await
    }

    /// Sends any request and returns the status and body text, whatever the
    /// status. For probing the API (tests, debugging).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|e| Error::Transport(e.to_string()))?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(transport)?))
    }

    /// DELETE `path`; the answer (`{"deleted": ...}`) carries nothing more.
    async fn delete(&self, path: &str) -> Result<()> {
        let _: Deleted = self.json(Method::DELETE, path, None::<&()>).await?;
        Ok(())
    }

    /// DELETE `path` of a route that answers 204 without a body.
    pub(crate) async fn delete_no_content(&self, path: &str) -> Result<()> {
        let resp = self
            .http
            .request(Method::DELETE, format!("{}{path}", self.base))
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(())
    }

    async fn json<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        decode(req.send().await.map_err(transport)?).await
    }
}

/// The lines of a streamed answer, read as they arrive.
pub struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    /// The next line without its newline; `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                return Ok(Some(line));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            match self.resp.chunk().await.map_err(transport)? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.done = true,
            }
        }
    }
}

/// A node's base URL from what a user types: `host:port` and `localhost:port`
/// get `http://`; `http://` and `https://` URLs are kept. No trailing slash.
pub fn node_url(text: &str) -> Result<String> {
    let text = text.trim();
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let bad = |why: String| {
        Error::Transport(format!(
            "`{text}` is not a node address ({why}); give host:port, localhost:7700 or http(s)://host:port"
        ))
    };
    let url = reqwest::Url::parse(&full).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "the scheme must be http or https, not {}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".to_string()));
    }
    Ok(full.trim_end_matches('/').to_string())
}

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn transport(e: reqwest::Error) -> Error {
    if e.is_connect() {
        Error::Transport(format!(
            "cannot reach the node ({e}); is `shoal serve` running, and is --url / SHOAL_URL right?"
        ))
    } else {
        Error::Transport(e.to_string())
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    if !resp.status().is_success() {
        return Err(api_error(resp).await);
    }
    let bytes = resp.bytes().await.map_err(transport)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Transport(format!("unreadable answer from the node: {e}")))
}

async fn api_error(resp: reqwest::Response) -> Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => Error::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: if status == StatusCode::NOT_FOUND {
                ErrorCode::RouteNotFound
            } else {
                ErrorCode::Internal
            },
            message: format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ),
        },
    }
}
