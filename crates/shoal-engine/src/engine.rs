//! `Handle`: the engine as the HTTP layer sees it, composed of services that
//! each own their state.
//!
//! | service | owns |
//! |---|---|
//! | `Functions` | the registry of deployed versions and the deploy rules |
//! | `Dispatcher` | every run of user code: sync calls, queue consumers, live records, settlement |
//! | `Queues` | user queues: settings, sends, dead letters, history |
//! | `Limiters` | rate limiters' settings and GCRA state |
//! | `Jobs` | fan-out jobs, their progress and once-only fan-in |
//! | `Categories` | documents and queries |
//! | `Tokens` | API tokens and the cache of verified ones |
//! | `Kv` | the key-value store's rules and its sweep of expired entries |
//!
//! Services reach each other only through their methods; what they share
//! and none owns (store, runtime, clock, randomness, tasks) is the `Env`.
//! The engine knows no HTTP and names no concrete storage or runtime adapter.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

use tracing::{info, warn};

use shoal_runtime::{PoolStats, Runtime};
use shoal_store::{
    Backend, ChildResult, FunctionRecord, InvocationRecord, LimiterRecord, QueueDepth,
};
use shoal_types::Role;

use crate::auth::{Token, Tokens};
use crate::blobs::{BatchResult, Blobs};
use crate::categories::{Categories, Category, CategoryOptions, NewDoc, RunningQuery};
use crate::channels::{ChannelView, Channels, Position, PublishResult, Subscription};
use crate::clock::Clock;
use crate::cluster::{Cluster, NodeView};
use crate::consumers::Consumers;
use crate::dispatch::{Completed, Dispatcher};
use crate::env::{Env, Options, Random, SystemRandom, Tasks};
use crate::error::{Removal, Result};
use crate::functions::{Deploy, DeployOptions, DeployedNow, Functions, Synced, Versions};
use crate::invocation::queue_name;
use crate::jobs::{JobPage, JobSpec, JobView, Jobs};
use crate::kv::{Kv, KvWhen};
use crate::limits::Limiters;
use crate::queues::{OutMessage, QueueHistoryPoint, QueueInfo, QueueSettings, Queues};
use crate::secrets::{SecretInfo, Secrets};
use crate::sites::{SiteDeployed, SiteLookup, SiteOptions, SiteRecord, Sites};

/// The engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Handle {
    env: Arc<Env>,
    cluster: Arc<Cluster>,
    functions: Arc<Functions>,
    limiters: Arc<Limiters>,
    dispatcher: Arc<Dispatcher>,
    tokens: Arc<Tokens>,
    secrets: Arc<Secrets>,
    kv: Arc<Kv>,
    blobs: Arc<Blobs>,
    channels: Arc<Channels>,
    sites: Arc<Sites>,
    notifications: Arc<crate::notifications::Notifications>,
}

/// What the engine is built from. The binary passes the real store and
/// runtime; tests pass an in-memory store, a scripted runtime and a clock
/// that follows tokio's paused time.
pub struct Parts {
    pub opts: Options,
    pub backend: Backend,
    pub runtime: Arc<dyn Runtime>,
    pub clock: Arc<dyn Clock>,
    /// Jitter; `None` for the system's generator.
    pub random: Option<Arc<dyn Random>>,
    pub shutdown: CancellationToken,
    /// How notifications are sent (HTTP in the binary, a fake in tests);
    /// `None`: deliveries are queued and wait for a node that has one.
    pub webhook: Option<Arc<dyn crate::notifications::Webhook>>,
}

/// How a deploy ended.
#[derive(Debug, Clone)]
pub enum DeployOutcome {
    /// A new version, now live.
    Deployed(FunctionRecord),
    /// The live version has the same code and `shoal.toml`: nothing changed.
    Unchanged(FunctionRecord),
    /// A dry run: the version loads; nothing was recorded (version 0).
    Checked(FunctionRecord),
}

/// Starts the engine: loads deployed functions and limiters and starts the
/// consumers of their queues. Work stops when `shutdown` is cancelled; then
/// call [`Handle::drain`].
pub async fn start(
    opts: Options,
    backend: Backend,
    runtime: Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<Handle> {
    start_with(Parts {
        opts,
        backend,
        runtime,
        clock,
        random: None,
        shutdown,
        webhook: None,
    })
    .await
}

/// [`start`] with every dependency given.
pub async fn start_with(parts: Parts) -> Result<Handle> {
    let env = Arc::new(Env {
        opts: parts.opts,
        backend: parts.backend,
        runtime: parts.runtime,
        clock: parts.clock,
        random: parts.random.unwrap_or_else(|| Arc::new(SystemRandom)),
        tasks: Tasks::new(parts.shutdown),
        triggers: std::sync::OnceLock::new(),
        notifications: std::sync::OnceLock::new(),
    });
    let consumers = Arc::new(Consumers::default());
    let secrets = Arc::new(Secrets::with_store(
        env.opts.data_dir.clone(),
        env.opts.secrets_key_file.clone(),
        env.backend.catalog.clone(),
    ));
    let functions = Arc::new(Functions::new(env.clone(), secrets.clone()));
    let limiters = Arc::new(Limiters::new(env.clone()));
    let jobs = Arc::new(Jobs::new(env.clone(), functions.clone(), consumers.clone()));
    let queues = Arc::new(Queues::new(
        env.clone(),
        functions.clone(),
        consumers.clone(),
    ));
    let channels = Channels::new(env.clone());
    let categories = Arc::new(Categories::new(
        env.clone(),
        functions.clone(),
        channels.clone(),
    ));
    categories.start_shared_queries();
    let dispatcher = Arc::new(Dispatcher::new(
        env.clone(),
        functions.clone(),
        limiters.clone(),
        consumers,
        jobs,
        queues,
        categories,
        channels.clone(),
    ));
    let notifications = crate::notifications::Notifications::new(
        env.clone(),
        secrets.clone(),
        channels.clone(),
        parts.webhook,
    );
    let handle = Handle {
        cluster: Arc::new(Cluster::new(env.clone())),
        notifications,
        secrets,
        tokens: Arc::new(Tokens::new(env.clone())),
        kv: Arc::new(Kv::new(env.clone())),
        blobs: Arc::new(Blobs::new(env.clone())),
        channels,
        sites: Arc::new(Sites::new(env.clone())),
        env,
        functions,
        limiters,
        dispatcher,
    };
    // Read before loading: a change made meanwhile by another node moves it
    // past this, and the sync loop picks the change up.
    let generation = handle.env.backend.catalog.catalog_generation().await?;
    handle
        .functions
        .synced_generation
        .store(generation, std::sync::atomic::Ordering::Release);
    handle.limiters.load().await?;
    handle.secrets.start().await?;
    // Notifications: their settings, the deliverer, and the events they
    // follow (outcomes, dead letters, finished jobs).
    handle.notifications.start().await?;
    let _ = handle
        .env
        .notifications
        .set(Arc::downgrade(&handle.notifications));
    handle
        .dispatcher
        .outcomes
        .register(handle.notifications.clone());
    for d in handle.functions.load().await? {
        // Not with secrets this node cannot read: other nodes take its work.
        if d.secrets_unreadable.is_none() {
            handle.dispatcher.start_consumers(&d);
        }
    }
    handle.env.tasks.spawn(handle.clone().sync_loop());
    handle.env.tasks.spawn(handle.clone().heartbeat_loop());
    {
        let dispatcher = handle.dispatcher.clone();
        let tasks = handle.env.tasks.clone();
        handle.env.tasks.spawn(crate::channels::invocation_feed(
            handle.env.clone(),
            Arc::downgrade(&handle.channels),
            move || dispatcher.feed.subscribe(tasks.clone()),
        ));
        let jobs = handle.dispatcher.jobs.clone();
        handle.env.tasks.spawn(crate::channels::state_feed(
            handle.env.clone(),
            Arc::downgrade(&handle.channels),
            "_jobs.",
            Box::new(move |id| {
                let jobs = jobs.clone();
                Box::pin(async move {
                    let view = match jobs.view(&id).await {
                        Ok(view) => view,
                        Err(crate::Error::NotFound { .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    let c = &view.counts;
                    let done = view.finished_at_ms.is_some();
                    Ok(Some((
                        serde_json::json!({
                            "job": id,
                            "status": view.status,
                            "progress": view.progress,
                            "total": c.total,
                            "pending": c.pending,
                            "succeeded": c.succeeded,
                            "failed": c.failed,
                            "cancelled": c.cancelled,
                            "then_invocation": view.then_invocation,
                        }),
                        done,
                    )))
                })
            }),
        ));
        let queues = handle.dispatcher.queues.clone();
        handle.env.tasks.spawn(crate::channels::state_feed(
            handle.env.clone(),
            Arc::downgrade(&handle.channels),
            "_queues.",
            Box::new(move |name| {
                let queues = queues.clone();
                Box::pin(async move {
                    let info = match queues.info(&name).await {
                        Ok(info) => info,
                        Err(crate::Error::NotFound { .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    let d = &info.depth;
                    Ok(Some((
                        serde_json::json!({
                            "queue": name,
                            "waiting": d.waiting,
                            "in_flight": d.in_flight,
                            "dead": d.dead,
                        }),
                        false,
                    )))
                })
            }),
        ));
    }
    let queues = handle.dispatcher.queues.clone();
    handle.env.tasks.spawn(queues.sample_loop());
    handle.env.tasks.spawn(
        crate::schedules::Schedules::new(
            handle.env.clone(),
            handle.functions.clone(),
            handle.dispatcher.clone(),
        )
        .run(),
    );
    {
        // Owned by its loop (a task until the engine stops); the Env holds
        // it weakly for the document and blob paths.
        let triggers = Arc::new(crate::triggers::Triggers::new(
            handle.env.clone(),
            handle.functions.clone(),
            handle.dispatcher.clone(),
        ));
        let _ = handle.env.triggers.set(Arc::downgrade(&triggers));
        handle
            .dispatcher
            .outcomes
            .register(Arc::new(crate::triggers::Destinations::new(
                handle.functions.clone(),
                Arc::downgrade(&handle.dispatcher),
            )));
        handle.env.tasks.spawn(triggers.run());
    }
    crate::retention::start(handle.env.clone());
    Kv::start_sweep(handle.env.clone());
    crate::usage::UsageService::start_sampling(handle.env.clone());
    Blobs::start_sweep(handle.env.clone());
    handle.sites.start().await;
    Ok(handle)
}

impl Handle {
    // ---- notifications ----

    /// The notifications service (`emit` for events other services find,
    /// such as `budget.reached`).
    pub fn notifications(&self) -> &Arc<crate::notifications::Notifications> {
        &self.notifications
    }

    /// Creates or replaces a notification; answers it and its secret when
    /// the secret was generated (shown this once).
    pub async fn put_notification(
        &self,
        name: &str,
        spec: crate::notifications::NotificationSpec,
    ) -> Result<(crate::notifications::Notification, Option<String>)> {
        self.notifications.put(name, spec).await
    }

    pub async fn notification_list(&self) -> Result<Vec<crate::notifications::Notification>> {
        self.notifications.list().await
    }

    pub async fn notification(&self, name: &str) -> Result<crate::notifications::Notification> {
        self.notifications.get(name).await
    }

    pub async fn remove_notification(&self, name: &str) -> Result<()> {
        self.notifications.remove(name).await
    }

    /// A page of the delivery log, newest first.
    pub async fn notification_deliveries(
        &self,
        name: Option<&str>,
        status: Option<crate::notifications::DeliveryStatus>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::notifications::DeliveryPage> {
        self.notifications
            .deliveries(name, status, cursor, limit)
            .await
    }

    /// The sinks that follow finished invocations (destinations,
    /// notifications; tests register their own).
    pub fn outcomes(&self) -> &crate::outcomes::Outcomes {
        &self.dispatcher.outcomes
    }

    // ---- tokens ----

    /// The role of a bearer secret, or `None` when it is unknown or revoked
    /// — or limited to channel scopes, which admit no other request.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Role>> {
        Ok(self
            .tokens
            .verify(secret)
            .await?
            .filter(|c| !c.scoped())
            .map(|c| c.role))
    }

    /// Who a bearer secret belongs to, channel scopes included.
    pub async fn caller(&self, secret: &str) -> Result<Option<crate::auth::Caller>> {
        self.tokens.verify(secret).await
    }

    /// Creates a token, limited to channel scopes when `channels` has any;
    /// returns it with its secret (shown once).
    pub async fn create_token(
        &self,
        role: Role,
        name: &str,
        channels: Vec<String>,
    ) -> Result<(Token, String)> {
        self.tokens.create(role, name, None, channels).await
    }

    /// Creates a token of a user (its role at most the user's), limited to
    /// `scopes` when there are any (`function:P`, `category:P`, `queue:P`,
    /// `channel:subscribe:P`, `channel:publish:P`); returns it with its
    /// secret (shown once).
    pub async fn create_user_token(
        &self,
        role: Role,
        name: &str,
        user: Option<String>,
        scopes: Vec<String>,
    ) -> Result<(Token, String)> {
        self.tokens.create(role, name, user, scopes).await
    }

    // ---- users ----

    pub async fn create_user(&self, name: &str, role: Role) -> Result<shoal_store::UserRecord> {
        self.tokens.create_user(name, role).await
    }

    /// Every user with its tokens, sorted by name.
    pub async fn users(&self) -> Result<Vec<(shoal_store::UserRecord, Vec<Token>)>> {
        self.tokens.users().await
    }

    pub async fn user(&self, name: &str) -> Result<(shoal_store::UserRecord, Vec<Token>)> {
        self.tokens.user(name).await
    }

    pub async fn set_user_role(&self, name: &str, role: Role) -> Result<shoal_store::UserRecord> {
        self.tokens.set_user_role(name, role).await
    }

    /// Deletes a user and revokes its tokens; returns their ids.
    pub async fn delete_user(&self, name: &str) -> Result<Vec<String>> {
        self.tokens.delete_user(name).await
    }

    pub async fn tokens(&self) -> Result<Vec<Token>> {
        self.tokens.list().await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.tokens.revoke(id).await
    }

    // ---- functions ----

    /// Deploys a function archive (tar of a directory with `shoal.toml`) as
    /// a new live version (or finds it unchanged).
    pub async fn deploy(&self, archive: Vec<u8>) -> Result<FunctionRecord> {
        match self.deploy_with(archive, DeployOptions::default()).await? {
            DeployOutcome::Deployed(r)
            | DeployOutcome::Unchanged(r)
            | DeployOutcome::Checked(r) => Ok(r),
        }
    }

    /// Deploys a function archive: a new live version once it loads in a
    /// real worker; the live version when its code is the same; only the
    /// check with `dry_run`.
    pub async fn deploy_with(
        &self,
        archive: Vec<u8>,
        opts: DeployOptions,
    ) -> Result<DeployOutcome> {
        let deployed = match self.functions.deploy(archive, opts).await? {
            Deploy::New(d) => d,
            Deploy::Unchanged(d) => return Ok(DeployOutcome::Unchanged(d.record.clone())),
            Deploy::Checked(r) => return Ok(DeployOutcome::Checked(*r)),
        };
        self.went_live(&deployed).await?;
        let d = &deployed.current;
        info!(function = %d.record.name, version = d.record.version, "Function deployed.");
        Ok(DeployOutcome::Deployed(d.record.clone()))
    }

    /// After a version became live: its queue and consumers; the replaced
    /// version's warm workers are no longer needed for new calls (queued
    /// async invocations of it start a pool again if needed).
    async fn went_live(&self, now: &DeployedNow) -> Result<()> {
        let d = &now.current;
        self.dispatcher.cache.forget(d.record.name.as_str());
        self.dispatcher.queues.ensure_for_subscriber(d).await?;
        // Not with secrets this node cannot read: other nodes take its work.
        if d.secrets_unreadable.is_none() {
            self.dispatcher.start_consumers(d);
        }
        if let Some(prev) = &now.previous
            && prev.deployment.key != d.deployment.key
        {
            self.env.runtime.retire(&prev.deployment.key);
        }
        Ok(())
    }

    /// Follows changes other nodes sharing the store make to the catalog:
    /// every `catalog_poll`, or at once after a lookup missed, compares the
    /// catalog generation with the one last synced and, when it moved,
    /// reloads functions (starting and stopping consumers and pools),
    /// limiters, and forgets verified tokens.
    async fn sync_loop(self) {
        let poll = self.env.opts.node.catalog_poll;
        // Said once when the store stops answering, once when it is back.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.env.tasks.stopping() => return,
                _ = tokio::time::sleep(poll) => {}
                _ = self.functions.sync_wanted.notified() => {}
            }
            let mut changes = self.functions.take_unapplied();
            match self.env.backend.catalog.catalog_generation().await {
                Ok(generation) => {
                    if std::mem::take(&mut failing) {
                        info!("The store answers again; following the catalog.");
                    }
                    let synced = self.functions.synced_generation.load(Ordering::Acquire);
                    if generation != synced {
                        match self.sync_catalog().await {
                            Ok(synced) => {
                                self.functions
                                    .synced_generation
                                    .store(generation, Ordering::Release);
                                changes.push(synced);
                            }
                            Err(e) => warn!(error = %e, "Syncing the catalog failed; retrying."),
                        }
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, "Reading the catalog generation failed; retrying until the store answers.");
                    }
                }
            }
            for synced in changes {
                self.apply(synced).await;
            }
        }
    }

    /// Reloads what the catalog holds besides functions' consumers.
    async fn sync_catalog(&self) -> Result<Synced> {
        self.functions.sync_secrets().await?;
        let synced = self.functions.sync().await?;
        self.limiters.load().await?;
        self.tokens.forget_verified();
        self.dispatcher.queues.forget_settings();
        Ok(synced)
    }

    /// Starts what became live through another node and stops what was
    /// removed there.
    async fn apply(&self, synced: Synced) {
        for now in &synced.live {
            let d = &now.current;
            match self.went_live(now).await {
                Ok(()) => {
                    info!(function = %d.record.name, version = d.record.version, "Function version live (changed through another node).")
                }
                Err(e) => {
                    warn!(function = %d.record.name, error = %e, "Starting a version another node made live failed.")
                }
            }
        }
        for (name, versions) in &synced.removed {
            for d in versions {
                self.env.runtime.retire(&d.deployment.key);
            }
            self.dispatcher.wake_async(name);
            info!(function = %name, "Function removed (through another node).");
        }
    }

    /// Writes this node's heartbeat into the store every `heartbeat`.
    async fn heartbeat_loop(self) {
        let every = self.env.opts.node.heartbeat;
        loop {
            if let Err(e) = self.env.backend.catalog.put_node(self.node_record()).await {
                warn!(error = %e, "Writing the node's heartbeat failed; retrying.");
            }
            tokio::select! {
                _ = self.env.tasks.stopping() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// This node's heartbeat record as of now.
    fn node_record(&self) -> shoal_store::NodeRecord {
        let stats = self.env.runtime.stats();
        let busy: usize = stats.iter().map(|p| p.busy).sum();
        let idle: usize = stats.iter().map(|p| p.idle).sum();
        self.cluster.record(busy as u64, (busy + idle) as u64)
    }

    /// Every node sharing the store, this one first.
    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.cluster.nodes(self.node_record()).await
    }

    /// This node's id (new at each start).
    pub fn node_id(&self) -> &str {
        self.cluster.id()
    }

    /// The token a bearer secret belongs to, if any.
    pub async fn token_of(&self, secret: &str) -> Result<Option<Token>> {
        self.tokens.who(secret).await
    }

    /// The files of a version of a function (the live one by default).
    pub async fn function_files(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<crate::functions::FunctionFiles> {
        self.functions.files(name, version).await
    }

    /// Every version of a function, which is live, and its aliases.
    pub async fn function_versions(&self, name: &str) -> Result<Versions> {
        self.functions.versions(name).await
    }

    /// Makes `to` (by default the version before the live one) the live
    /// version; returns it.
    pub async fn rollback(&self, name: &str, to: Option<u64>) -> Result<FunctionRecord> {
        let rolled = self.functions.rollback(name, to).await?;
        self.went_live(&rolled).await?;
        let d = &rolled.current;
        info!(function = %d.record.name, version = d.record.version, "Function rolled back.");
        Ok(d.record.clone())
    }

    /// Points an alias of a function at one of its versions.
    pub async fn set_alias(&self, name: &str, alias: &str, version: u64) -> Result<()> {
        self.functions.set_alias(name, alias, version).await
    }

    /// Removes an alias of a function.
    pub async fn remove_alias(&self, name: &str, alias: &str) -> Result<()> {
        self.functions.remove_alias(name, alias).await
    }

    /// The live version of every function, sorted by name.
    pub async fn functions(&self) -> Result<Vec<FunctionRecord>> {
        let names = self.functions.names();
        Ok(names
            .iter()
            .filter_map(|n| self.functions.latest(n))
            .map(|d| d.record.clone())
            .collect())
    }

    /// The live version of a function.
    pub async fn function(&self, name: &str) -> Result<FunctionRecord> {
        let name = crate::functions::parse_name(name)?;
        self.functions
            .latest(name.as_str())
            .map(|d| d.record.clone())
            .ok_or_else(|| crate::Error::not_found(crate::Entity::Function, name.as_str()))
    }

    /// Removes a function and all its versions. Its queued asynchronous
    /// invocations fail with `load_failed`.
    pub async fn remove_function(&self, name: &str) -> Result<()> {
        let removed = self.functions.remove(name).await?;
        self.dispatcher.cache.forget(name);
        for d in &removed {
            self.env.runtime.retire(&d.deployment.key);
        }
        self.dispatcher.wake_async(name);
        info!(function = %name, "Function removed.");
        Ok(())
    }

    /// The live function route serving `method` `path` (`[[route]]` of
    /// `shoal.toml`), with its parameters and settings.
    pub fn match_route(&self, method: &str, path: &str) -> crate::RouteMatch {
        self.functions.match_route(method, path)
    }

    /// Takes one call of a route's per-client rate limit (in memory on
    /// this node) for `client`; or how long until it may call again.
    pub fn admit_route(
        &self,
        hit: &crate::RouteHit,
        client: &str,
    ) -> std::result::Result<(), Duration> {
        self.functions.admit_route(hit, client)
    }

    /// The schedules of every live version, by function and index, each
    /// with its next fire times.
    pub async fn schedules(&self) -> Result<Vec<crate::ScheduleView>> {
        crate::schedules::listed(&self.env, &self.functions).await
    }

    /// Every `[[trigger]]` of the live versions, by function and index.
    pub fn triggers(&self) -> Vec<crate::TriggerView> {
        crate::triggers::views(&self.functions)
    }

    /// Pauses (`paused`) or resumes a schedule of a live version, on every
    /// node; answers it as [`Handle::schedules`] lists it.
    pub async fn pause_schedule(
        &self,
        function: &str,
        index: usize,
        paused: bool,
    ) -> Result<crate::ScheduleView> {
        crate::schedules::set_paused(&self.env, &self.functions, function, index, paused).await
    }

    /// A page of a schedule's fired ticks, newest first, older than the
    /// tick `before` when given; with the next page's `before`.
    pub async fn schedule_history(
        &self,
        function: &str,
        index: usize,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<crate::TickRecord>, Option<u64>)> {
        crate::schedules::history(
            &self.env,
            &self.dispatcher,
            &self.functions,
            function,
            index,
            before,
            limit,
        )
        .await
    }

    // ---- invocations ----

    /// Runs a function and waits for its outcome. `event` must be JSON text.
    pub async fn invoke(&self, name: &str, event: String) -> Result<Completed> {
        self.dispatcher.invoke_sync(name, event).await
    }

    /// Queues an invocation durably and returns its id.
    pub async fn invoke_async(&self, name: &str, event: String) -> Result<String> {
        self.dispatcher.invoke_async(name, event).await
    }

    /// [`invoke`](Self::invoke) for `origin`: its record names the token
    /// and user that started it (see [`Caller::origin`](crate::Caller::origin)).
    pub async fn invoke_by(
        &self,
        origin: &crate::auth::Origin,
        name: &str,
        event: String,
    ) -> Result<Completed> {
        self.dispatcher.invoke_sync_by(origin, name, event).await
    }

    /// [`invoke_async`](Self::invoke_async) for `origin`.
    pub async fn invoke_async_by(
        &self,
        origin: &crate::auth::Origin,
        name: &str,
        event: String,
    ) -> Result<String> {
        self.dispatcher.invoke_async_by(origin, name, event).await
    }

    pub async fn invocation(&self, id: &str) -> Result<InvocationRecord> {
        self.dispatcher.invocation(id).await
    }

    /// The logs of an invocation's latest attempt (empty when it printed
    /// nothing).
    pub async fn logs(&self, id: &str) -> Result<Vec<u8>> {
        self.dispatcher.logs(id).await
    }

    /// Durable invocation records matching `filter`, newest first, after
    /// `after`; `limit` is at most [`MAX_LIST_LIMIT`](crate::MAX_LIST_LIMIT).
    pub async fn list_invocations(
        &self,
        filter: &shoal_store::InvocationFilter,
        after: Option<&shoal_store::InvocationCursor>,
        limit: usize,
    ) -> Result<shoal_store::InvocationPage> {
        let limit = limit.min(crate::history::MAX_LIST_LIMIT);
        Ok(self
            .env
            .backend
            .invocations
            .list_invocations(filter, after, limit)
            .await?)
    }

    /// Queues a new asynchronous invocation with the event of invocation
    /// `id`: of the function's live version, or with `same_version` of the
    /// version that ran it. Returns the new invocation's id.
    pub async fn replay(&self, id: &str, same_version: bool) -> Result<String> {
        self.replay_by(&crate::auth::Origin::default(), id, same_version)
            .await
    }

    /// [`replay`](Self::replay) for `origin`: the new invocation names the
    /// token and user that replayed it (not the original's).
    pub async fn replay_by(
        &self,
        origin: &crate::auth::Origin,
        id: &str,
        same_version: bool,
    ) -> Result<String> {
        let r = self.dispatcher.invocation(id).await?;
        let target = if same_version {
            format!("{}@{}", r.function, r.version)
        } else {
            r.function.to_string()
        };
        self.dispatcher
            .invoke_async_by(origin, &target, r.input)
            .await
    }

    /// Invocations the list's indexes cannot answer alone: failed or timed
    /// out, or with a text in their logs, event, output or error (a
    /// bounded scan; see `search.rs`).
    pub async fn search_invocations(
        &self,
        search: &crate::search::Search,
        after: Option<&shoal_store::InvocationCursor>,
        limit: usize,
    ) -> Result<crate::search::Found> {
        let limit = limit.min(crate::history::MAX_LIST_LIMIT);
        crate::search::search(&self.env.backend, search, after, limit).await
    }

    /// Every attempt that finishes from now on, once its record is durable.
    pub fn follow_invocations(&self) -> crate::history::Feed {
        self.dispatcher.feed.subscribe(self.env.tasks.clone())
    }

    /// The data directory's size and the number of stored invocations.
    pub async fn stats(&self) -> Result<crate::history::NodeStats> {
        let invocations = self.env.backend.invocations.count_invocations().await?;
        let dir = self.env.opts.data_dir.clone();
        // A walk of the directory: blocking I/O, off the async threads.
        let data_dir_bytes = tokio::task::spawn_blocking(move || crate::history::dir_size(&dir))
            .await
            .unwrap_or(0);
        Ok(crate::history::NodeStats {
            data_dir_bytes,
            invocations,
            retention: self.env.opts.retention,
        })
    }

    // ---- usage ----

    /// Usage, prices, budgets and invocation counts (`usage.rs`).
    pub fn usage(&self) -> &crate::usage::UsageService {
        &self.dispatcher.usage
    }

    /// What 1,000 calls of a function's live version cost.
    pub async fn estimate(&self, name: &str) -> Result<crate::usage::Estimate> {
        let f = self.function(name).await?;
        self.dispatcher
            .usage
            .estimate(f.name.as_str(), f.memory_mb)
            .await
    }

    // ---- categories ----

    /// Creates a category with a shard level (the default when `None`).
    pub async fn create_category(&self, name: &str, shards: Option<u32>) -> Result<Category> {
        self.dispatcher.categories.create(name, shards).await
    }

    pub async fn category(&self, name: &str) -> Result<Category> {
        self.dispatcher.categories.get(name).await
    }

    pub async fn categories(&self) -> Result<Vec<Category>> {
        self.dispatcher.categories.list().await
    }

    pub async fn delete_category(&self, name: &str, removal: Removal) -> Result<()> {
        self.dispatcher.categories.delete(name, removal).await
    }

    /// Writes documents atomically (creating the category if needed) and
    /// returns their ids in order.
    pub async fn write_docs(&self, category: &str, docs: Vec<NewDoc>) -> Result<Vec<String>> {
        self.dispatcher.categories.write(category, docs).await
    }

    pub async fn doc(&self, category: &str, id: &str) -> Result<Vec<u8>> {
        self.dispatcher.categories.get_doc(category, id).await
    }

    pub async fn delete_doc(&self, category: &str, id: &str) -> Result<()> {
        self.dispatcher.categories.delete_doc(category, id).await
    }

    /// A page of documents and the cursor of the next page.
    pub async fn scan(
        &self,
        category: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<shoal_store::StoredDoc>, Option<String>)> {
        self.dispatcher
            .categories
            .scan(category, cursor, limit)
            .await
    }

    /// Starts a map (and reduce) of `function` over a category.
    pub async fn query(
        &self,
        category: &str,
        function: &str,
        skip_errors: bool,
    ) -> Result<RunningQuery> {
        self.dispatcher
            .categories
            .query(category, function, skip_errors)
            .await
    }

    pub fn category_options(&self) -> CategoryOptions {
        self.env.opts.categories
    }

    // ---- queues ----

    /// Creates a queue or changes its settings.
    pub async fn put_queue(&self, name: &str, settings: QueueSettings) -> Result<QueueInfo> {
        self.dispatcher.queues.put(name, settings).await
    }

    pub async fn queue(&self, name: &str) -> Result<QueueInfo> {
        self.dispatcher.queues.info(name).await
    }

    pub async fn queues(&self) -> Result<Vec<QueueInfo>> {
        self.dispatcher.queues.list().await
    }

    pub async fn delete_queue(&self, name: &str, removal: Removal) -> Result<()> {
        self.dispatcher.queues.delete(name, removal).await
    }

    /// Sends messages durably; returns their ids.
    pub async fn send(&self, queue: &str, messages: Vec<OutMessage>) -> Result<Vec<String>> {
        self.dispatcher.queues.send(queue, messages).await
    }

    /// Sends messages durably; says of each whether it was a duplicate.
    pub async fn send_messages(
        &self,
        queue: &str,
        messages: Vec<OutMessage>,
    ) -> Result<Vec<crate::queues::Sent>> {
        self.dispatcher.queues.send_messages(queue, messages).await
    }

    pub async fn dead_letters(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<shoal_store::DeadLetter>> {
        self.dispatcher
            .queues
            .dead_letters(queue, after, limit)
            .await
    }

    pub async fn redrive(&self, queue: &str, ids: Option<Vec<String>>) -> Result<u64> {
        self.dispatcher.queues.redrive(queue, ids).await
    }

    pub async fn purge_dead(&self, queue: &str, ids: Option<Vec<String>>) -> Result<u64> {
        self.dispatcher.queues.purge_dead(queue, ids).await
    }

    pub async fn purge_queue(&self, queue: &str, removal: Removal) -> Result<u64> {
        self.dispatcher.queues.purge(queue, removal).await
    }

    /// The queue's history since `since_ms`, with rates.
    pub async fn queue_history(
        &self,
        queue: &str,
        since_ms: u64,
    ) -> Result<Vec<QueueHistoryPoint>> {
        self.dispatcher.queues.history(queue, since_ms).await
    }

    // ---- jobs ----

    /// Starts a job: one asynchronous invocation of `spec.function` per
    /// event, then `spec.then` once all have finished. Returns its id.
    pub async fn start_job(&self, spec: JobSpec) -> Result<String> {
        self.start_job_by(&crate::auth::Origin::default(), spec)
            .await
    }

    /// [`start_job`](Self::start_job) for `origin`: its children and
    /// fan-in record the token and user that started it.
    pub async fn start_job_by(
        &self,
        origin: &crate::auth::Origin,
        spec: JobSpec,
    ) -> Result<String> {
        self.dispatcher.jobs.start(spec, None, origin).await
    }

    pub async fn job(&self, id: &str) -> Result<JobView> {
        self.dispatcher.jobs.view(id).await
    }

    /// Jobs newest first (by id: creation order), strictly older than the
    /// job id `after`, at most `limit`, with their counts and status.
    pub async fn list_jobs(&self, after: Option<&str>, limit: usize) -> Result<JobPage> {
        self.dispatcher.jobs.list(after, limit).await
    }

    /// Children's results by index from `offset`, at most `limit`.
    pub async fn job_results(
        &self,
        id: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<ChildResult>> {
        self.dispatcher.jobs.results(id, offset, limit).await
    }

    /// Cancels a job and the jobs below it.
    pub async fn cancel_job(&self, id: &str) -> Result<()> {
        self.dispatcher.jobs.cancel(id).await
    }

    // ---- secrets ----

    /// Sets a secret; functions naming it get the new value from their next
    /// cold start (their warm workers are retired now).
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<()> {
        let changed = self.secrets.set(name, value, self.env.now_ms()).await?;
        self.functions.secrets_changed(&changed);
        Ok(())
    }

    /// The secrets' names (never their values).
    pub async fn secrets(&self) -> Result<Vec<SecretInfo>> {
        self.functions.sync_secrets().await?;
        self.secrets.list()
    }

    /// Removes a secret that no function names.
    pub async fn remove_secret(&self, name: &str) -> Result<()> {
        crate::secrets::check_name(name)?;
        let secrets = self.secrets.clone();
        self.functions
            .unless_secret_used(name, async move { secrets.remove(name).await })
            .await
    }

    // ---- key-value store ----

    /// The live entry of a key.
    pub async fn kv_get(&self, key: &str) -> Result<shoal_store::KvEntry> {
        self.kv.get(key).await
    }

    /// Stores a JSON value under a key when `when` holds, expiring after
    /// `ttl` when given (else never).
    pub async fn kv_set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        when: KvWhen,
    ) -> Result<shoal_store::KvEntry> {
        self.kv.set(key, value, ttl, when).await
    }

    /// Adds `by` to a key's integer value (an absent key counts as 0).
    pub async fn kv_incr(&self, key: &str, by: i64) -> Result<shoal_store::KvEntry> {
        self.kv.incr(key, by).await
    }

    /// Deletes a key, only at `version` when given.
    pub async fn kv_delete(&self, key: &str, version: Option<u64>) -> Result<()> {
        self.kv.delete(key, version).await
    }

    /// A page of live entries whose key starts with `prefix`.
    pub async fn kv_list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<shoal_store::KvPage> {
        self.kv.list(prefix, cursor, limit).await
    }

    // ---- blobs ----

    /// Streams `body` into the blob `key`, replacing it whole once the
    /// body has ended; a body that fails midway stores nothing.
    pub async fn blob_upload<S, E>(
        &self,
        key: &str,
        content_type: Option<String>,
        body: S,
    ) -> Result<shoal_store::BlobMeta>
    where
        S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.blobs.upload(key, content_type, body).await
    }

    /// A blob's metadata.
    pub async fn blob_meta(&self, key: &str) -> Result<shoal_store::BlobMeta> {
        self.blobs.meta(key).await
    }

    /// `len` bytes of a blob from `offset` (clamped to its end), with the
    /// metadata of that same content.
    pub async fn blob_read(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<shoal_store::BlobRead> {
        self.blobs.read(key, offset, len).await
    }

    /// Deletes a blob.
    pub async fn blob_delete(&self, key: &str) -> Result<()> {
        self.blobs.delete(key).await
    }

    /// A page of blobs whose key starts with `prefix`.
    pub async fn blob_list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<shoal_store::BlobPage> {
        self.blobs.list(prefix, cursor, limit).await
    }

    /// Creates a zero-filled fixed-size blob (see [`Blobs::create_fixed`]).
    pub async fn blob_create_fixed(
        &self,
        key: &str,
        size: u64,
        replace: bool,
    ) -> Result<std::result::Result<shoal_store::BlobMeta, shoal_store::BlobMeta>> {
        self.blobs.create_fixed(key, size, replace).await
    }

    /// Applies a batch of bit and byte operations to a fixed-size blob.
    pub async fn blob_apply(
        &self,
        key: &str,
        ops: Vec<shoal_store::BlobOp>,
    ) -> Result<BatchResult> {
        self.blobs.apply(key, ops).await
    }

    // ---- static sites ----

    /// Deploys a tar archive of a directory as a new version of a static
    /// site, live at once (see `sites.rs`).
    pub async fn site_deploy<S, E>(
        &self,
        name: &str,
        opts: SiteOptions,
        body: S,
    ) -> Result<SiteDeployed>
    where
        S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.sites.deploy(name, opts, body).await
    }

    pub async fn sites(&self) -> Result<Vec<SiteRecord>> {
        self.sites.list().await
    }

    pub async fn site(&self, name: &str) -> Result<SiteRecord> {
        self.sites.get(name).await
    }

    /// Makes a version live (the one before the live one when `None`).
    pub async fn site_rollback(&self, name: &str, version: Option<u64>) -> Result<SiteRecord> {
        self.sites.rollback(name, version).await
    }

    pub async fn remove_site(&self, name: &str) -> Result<()> {
        self.sites.remove(name).await
    }

    /// What a request path is in the site mounted on its longest prefix
    /// (from memory: no store read); `None` when no site covers it.
    pub fn site_lookup(&self, path: &str) -> Option<SiteLookup> {
        self.sites.lookup(path)
    }

    /// The bytes of a site's file (one a lookup answered).
    pub async fn site_read(&self, body: &crate::SiteBody) -> Result<shoal_store::BlobRead> {
        self.sites.read(body).await
    }

    // ---- channels ----

    /// Stores a channel's settings (history, public, coalescing).
    pub async fn configure_channel(
        &self,
        name: &str,
        settings: shoal_store::ChannelSettings,
    ) -> Result<()> {
        self.channels.configure(name, settings).await
    }

    /// A channel's settings (the defaults when it has none stored).
    pub async fn channel_settings(&self, name: &str) -> Result<shoal_store::ChannelSettings> {
        self.channels.settings(name).await
    }

    /// A channel's settings, position and presence.
    pub async fn channel(&self, name: &str) -> Result<ChannelView> {
        self.channels.view(name).await
    }

    /// Channels whose name starts with `prefix`, after `cursor`.
    pub async fn list_channels(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelView>> {
        self.channels.list(prefix, cursor, limit).await
    }

    /// The position of a channel's last message.
    pub async fn channel_position(&self, name: &str) -> Result<Position> {
        self.channels.position(name).await
    }

    /// Publishes messages on a user channel, with blob operations applied
    /// in the same atomic step when given.
    pub async fn publish(
        &self,
        name: &str,
        messages: Vec<shoal_store::NewChannelMessage>,
        blob: Option<(String, Vec<shoal_store::BlobOp>)>,
    ) -> Result<PublishResult> {
        self.channels.publish(name, messages, blob).await
    }

    /// Subscribes to a channel, resuming after `since` when given.
    pub async fn subscribe(&self, name: &str, since: Option<Position>) -> Result<Subscription> {
        self.channels.subscribe(name, since).await
    }

    // ---- limiters ----

    /// Creates or changes a shared rate limiter (takes effect at once).
    pub async fn put_limiter(
        &self,
        name: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<LimiterRecord> {
        self.limiters.put(name, per_second, burst).await
    }

    pub async fn limiters(&self) -> Result<Vec<LimiterRecord>> {
        self.limiters.list().await
    }

    /// Removes a limiter that no function uses.
    pub async fn remove_limiter(&self, name: &str) -> Result<()> {
        shoal_types::validate_name("limiter name", name)?;
        self.functions
            .unless_limiter_used(name, self.limiters.remove(name))
            .await
    }

    pub fn now_ms(&self) -> u64 {
        self.env.now_ms()
    }

    /// Whether the store takes writes (`/healthz` reports it); a flag, no I/O.
    pub fn store_health(&self) -> shoal_store::StoreHealth {
        self.env.backend.health()
    }

    /// Runs a task the engine owns: `drain` waits for it at shutdown (the
    /// HTTP layer streams query results this way).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.env.tasks.spawn(task);
    }

    // ---- observability ----

    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.env.runtime.stats()
    }

    /// Depth of each function's asynchronous invocation queue.
    pub async fn queue_depths(&self) -> Result<Vec<(String, QueueDepth)>> {
        let names = self.functions.names();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let depth = self.env.backend.queues.depth(&queue_name(&name)).await?;
            out.push((name, depth));
        }
        Ok(out)
    }

    /// Waits (up to `deadline`) for in-flight work after shutdown began,
    /// then stops every worker.
    pub async fn drain(&self, deadline: Duration) {
        if !self.env.tasks.stop(deadline).await {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "Shutdown deadline passed; killing workers."
            );
        }
        self.env.runtime.shutdown();
    }
}
