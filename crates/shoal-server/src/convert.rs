//! Conversions from engine and store records to the public wire types.

use serde_json::Value;

use shoal_engine::Token;
use shoal_engine::{ErrorRecord, FunctionRecord, InvocationRecord};
use shoal_protocol::{FunctionView, InvocationError, InvocationView, JobSlotView, TokenView};
use shoal_types::Failure;

pub(crate) fn function(r: &FunctionRecord) -> FunctionView {
    FunctionView {
        name: r.name.to_string(),
        version: r.version,
        runtime: r.runtime.clone(),
        handler: r.handler.clone(),
        timeout_ms: r.timeout_ms,
        memory_mb: r.memory_mb,
        concurrency: r.concurrency,
        retries: r.retries,
        code_sha256: r.code_sha256.clone(),
        has_requirements: r.env_dir.is_some(),
        deployed_at_ms: r.deployed_at_ms,
        deployed_by: r.deployed_by.as_ref().map(deployed_by),
        unchanged: false,
        dry_run: false,
        routes: routes(&r.routes),
    }
}

/// A function's `[[route]]`s as the API shows them.
pub(crate) fn routes(routes: &[shoal_engine::RouteRecord]) -> Vec<shoal_protocol::RouteView> {
    routes
        .iter()
        .map(|r| shoal_protocol::RouteView {
            method: r.method.clone(),
            path: r.path.clone(),
            auth: if r.public { "public" } else { "token" }.to_string(),
            rate_limit: r.rate_limit.map(|l| shoal_protocol::RouteRateView {
                per_second: l.per_second,
                burst: l.burst,
            }),
            cors: r.cors.as_ref().map(|c| shoal_protocol::RouteCorsView {
                origins: c.origins.clone(),
                methods: c.methods.clone(),
                headers: c.headers.clone(),
                credentials: c.credentials,
                max_age_s: c.max_age_s,
            }),
        })
        .collect()
}

pub(crate) fn deployed_by(b: &shoal_engine::DeployedBy) -> shoal_protocol::DeployedByView {
    shoal_protocol::DeployedByView {
        token_id: b.token_id.clone(),
        token_name: b.token_name.clone(),
        user: b.user.clone(),
    }
}

pub(crate) fn versions(v: &shoal_engine::Versions) -> shoal_protocol::FunctionVersions {
    shoal_protocol::FunctionVersions {
        name: v.name.clone(),
        live: v.live,
        aliases: v.aliases.iter().cloned().collect(),
        versions: v
            .versions
            .iter()
            .map(|r| shoal_protocol::VersionView {
                version: r.version,
                deployed_at_ms: r.deployed_at_ms,
                code_sha256: r.code_sha256.clone(),
                code_digest: r.code_digest.clone(),
                handler: r.handler.clone(),
                deployed_by: r.deployed_by.as_ref().map(deployed_by),
                live: r.version == v.live,
                aliases: v
                    .aliases
                    .iter()
                    .filter(|(_, n)| *n == r.version)
                    .map(|(a, _)| a.clone())
                    .collect(),
            })
            .collect(),
        routes: v
            .versions
            .iter()
            .find(|r| r.version == v.live)
            .map(|r| routes(&r.routes))
            .unwrap_or_default(),
    }
}

pub(crate) fn invocation(r: &InvocationRecord) -> InvocationView {
    InvocationView {
        id: r.id.clone(),
        function: r.function.to_string(),
        version: r.version,
        mode: r.mode.to_string(),
        status: r.status.to_string(),
        input: serde_json::from_str(&r.input).unwrap_or(Value::Null),
        output: r
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok()),
        error: r.error.as_ref().map(error_record),
        attempts: r.attempts,
        max_attempts: r.max_attempts,
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        duration_ms: r.duration_ms,
        queued_ms: r.queued_ms,
        billed_gb_seconds: r.billed_gb_s,
        cold_start: r.cold_start,
        next_attempt_at_ms: r.next_attempt_at_ms,
        job: r.job.as_ref().map(|s| JobSlotView {
            job: s.job.clone(),
            index: s.index,
        }),
        handed_to: r.handed_to.clone(),
        cache_hit: r.cache_hit,
        token: r.token.clone(),
        user: r.user.clone(),
    }
}

pub(crate) fn error_record(e: &ErrorRecord) -> InvocationError {
    InvocationError {
        kind: e.kind.to_string(),
        exception: e.exception.clone(),
        message: e.message.clone(),
        traceback: e.traceback.clone(),
    }
}

pub(crate) fn failure(f: &Failure) -> InvocationError {
    InvocationError {
        kind: f.kind.to_string(),
        exception: f.exception.clone(),
        message: f.message.clone(),
        traceback: f.traceback.clone(),
    }
}

pub(crate) fn token(t: &Token) -> TokenView {
    TokenView {
        id: t.id.clone(),
        role: t.role.as_str().to_string(),
        name: t.name.clone(),
        created_at_ms: t.created_at_ms,
        channels: t.channels.clone(),
        user: t.user.clone(),
        scopes: t.scopes.clone(),
    }
}
