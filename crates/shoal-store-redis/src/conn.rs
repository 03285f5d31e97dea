//! The one connection of a store, owned by a task: every call is issued in
//! the order the store's methods were called (the ports' contract: a write
//! is issued when its method is called, even if its future is dropped), and
//! the calls waiting at one moment go out as one pipeline.
//!
//! The task reconnects by itself: calls made while Redis is unreachable
//! fail at once with `Unavailable`, and the next call after Redis is back
//! succeeds. Lua scripts are sent whole (`EVAL`) the first time on each
//! connection and by hash (`EVALSHA`) after.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, Value};
use tokio::sync::{mpsc, oneshot};

use shoal_store::{Error, Pending};

/// Calls waiting at one moment go out in one pipeline of at most this many.
const MAX_BATCH: usize = 256;

/// How long a (re)connect may take before calls fail.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long Redis may take to answer a pipeline before the connection is
/// taken as dead.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A Lua script: its text and SHA-1, computed once.
pub(crate) struct Lua {
    text: String,
    sha: String,
}

impl Lua {
    pub(crate) fn new(text: impl Into<String>) -> Lua {
        let text = text.into();
        let sha = redis::Script::new(&text).get_hash().to_string();
        Lua { text, sha }
    }
}

/// A call: one command, or a script with its keys and arguments.
enum Call {
    Cmd(Cmd),
    Script {
        lua: &'static Lua,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    },
}

impl Call {
    fn command(&self, loaded: &HashSet<String>) -> Cmd {
        match self {
            Call::Cmd(cmd) => cmd.clone(),
            Call::Script { lua, keys, args } => {
                let mut cmd = if loaded.contains(&lua.sha) {
                    let mut c = redis::cmd("EVALSHA");
                    c.arg(&lua.sha);
                    c
                } else {
                    let mut c = redis::cmd("EVAL");
                    c.arg(&lua.text);
                    c
                };
                cmd.arg(keys.len()).arg(keys).arg(args);
                cmd
            }
        }
    }
}

struct Op {
    call: Call,
    reply: oneshot::Sender<std::result::Result<Value, RedisError>>,
}

/// The sending side of the connection task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    tx: mpsc::UnboundedSender<Op>,
    /// For connections of their own (a blocking `XREAD`: see `channels`).
    client: Arc<Client>,
}

impl Conn {
    /// Connects and starts the task that owns the connection. The task ends
    /// when every `Conn` is dropped.
    pub(crate) async fn open(
        url: &str,
        ca_file: Option<&std::path::Path>,
    ) -> std::result::Result<Conn, ConnectError> {
        let bad_url = |e: RedisError| {
            ConnectError::Rejected(format!(
                "bad Redis URL ({e}); use redis://[user:password@]host:port/db, or rediss:// for TLS"
            ))
        };
        let client = if url.starts_with("rediss://") {
            // One crypto provider for the process (ring: small, no C
            // toolchain beyond cc); a second install is a no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let root_cert = match ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    ConnectError::Rejected(format!(
                        "cannot read the CA file {}: {e}",
                        path.display()
                    ))
                })?),
                None => None,
            };
            Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert,
                },
            )
            .map_err(bad_url)?
        } else {
            Client::open(url).map_err(bad_url)?
        };
        let first = connect(&client).await.map_err(|e| {
            if e.kind() == redis::ErrorKind::AuthenticationFailed
                || e.code()
                    .is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH" || c == "NOPERM")
            {
                ConnectError::Rejected(format!(
                    "Redis refused the credentials ({e}); check the user and password in the URL"
                ))
            } else if e.to_string().to_lowercase().contains("certificate") {
                ConnectError::Rejected(format!(
                    "Redis's TLS certificate is not trusted ({e}); pass the certificate authority that signed it with --redis-ca-file"
                ))
            } else {
                let hint = if url.starts_with("rediss://") {
                    " (over TLS: if the server does not speak TLS on that port, use redis://)"
                } else {
                    ""
                };
                ConnectError::Unreachable(format!("cannot reach Redis: {e}{hint}"))
            }
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let client = Arc::new(client);
        // Owned by the store: it ends when the last `Conn` is dropped.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(run(client.clone(), Some(first), rx));
        Ok(Conn { tx, client })
    }

    /// A new connection of its own, without a response timeout (for calls
    /// that block on the server, which must not hold up the shared one).
    pub(crate) async fn dedicated(&self) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(failed)
    }

    /// Issues one command now; its reply, decoded.
    pub(crate) fn query<T: FromRedisValue + Send + 'static>(&self, cmd: Cmd) -> Pending<T> {
        self.issue(Call::Cmd(cmd))
    }

    /// Issues a script call now; its reply, decoded.
    pub(crate) fn script<T: FromRedisValue + Send + 'static>(
        &self,
        lua: &'static Lua,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> Pending<T> {
        self.issue(Call::Script { lua, keys, args })
    }

    fn issue<T: FromRedisValue + Send + 'static>(&self, call: Call) -> Pending<T> {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send(Op { call, reply });
        Box::pin(async move {
            if sent.is_err() {
                return Err(Error::Unavailable("the Redis connection is closed".into()));
            }
            let value = answer
                .await
                .map_err(|_| Error::Unavailable("the Redis connection is closed".into()))?
                .map_err(failed)?;
            T::from_redis_value(value)
                .map_err(|e| Error::Corrupt(format!("unexpected reply from Redis: {e}")))
        })
    }
}

/// Script arguments: anything `redis` can encode, as bytes.
pub(crate) fn arg(value: impl redis::ToRedisArgs) -> Vec<u8> {
    let mut out = value.to_redis_args();
    if out.len() == 1 {
        out.pop().unwrap_or_default()
    } else {
        out.concat()
    }
}

/// A store error for a failed call: `Full` when Redis is out of memory
/// (`maxmemory` reached with `noeviction`), `Unavailable` otherwise.
pub(crate) fn failed(e: RedisError) -> Error {
    if e.code() == Some("OOM") {
        Error::Full(format!(
            "Redis is out of memory (maxmemory reached): {e}; free memory or raise maxmemory"
        ))
    } else {
        Error::Unavailable(format!("redis: {e}"))
    }
}

async fn connect(client: &Client) -> std::result::Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Why a store could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Redis did not answer (down, or not reachable yet): worth waiting for.
    #[error("{0}")]
    Unreachable(String),
    /// Redis answered, and no wait will help: a bad URL, wrong credentials,
    /// a server that may evict keys.
    #[error("{0}")]
    Rejected(String),
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Error {
        Error::Unavailable(e.to_string())
    }
}

/// True when the connection itself failed (not just one command).
fn broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

async fn run(
    client: Arc<Client>,
    first: Option<MultiplexedConnection>,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    let mut conn = first;
    // Scripts this connection's server has seen (sent whole once).
    let mut loaded: HashSet<String> = HashSet::new();
    while let Some(op) = rx.recv().await {
        let mut batch = vec![op];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            loaded.clear();
            match connect(&client).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    for op in batch {
                        let _ = op.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut pipe = Pipeline::new();
        let mut sent_whole = Vec::new();
        for op in &batch {
            pipe.add_command(op.call.command(&loaded));
            if let Call::Script { lua, .. } = &op.call
                && !loaded.contains(&lua.sha)
            {
                sent_whole.push(lua.sha.clone());
            }
        }
        match c.send_packed_commands(&pipe, 0, batch.len()).await {
            Ok(values) => {
                loaded.extend(sent_whole);
                let mut retry = Vec::new();
                for (op, value) in batch.into_iter().zip(values) {
                    match value.extract_error() {
                        Err(e) if e.code() == Some("NOSCRIPT") => retry.push(op),
                        result => {
                            let _ = op.reply.send(result);
                        }
                    }
                }
                // The server forgot its scripts (SCRIPT FLUSH): send them whole.
                if !retry.is_empty() {
                    loaded.clear();
                    for op in retry {
                        let cmd = op.call.command(&loaded);
                        let result = cmd.query_async::<Value>(c).await;
                        let _ = op.reply.send(result);
                    }
                }
            }
            Err(e) => {
                if broken(&e) {
                    conn = None;
                }
                for op in batch {
                    let _ = op.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
