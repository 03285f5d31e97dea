//! `/v1/nodes`: the nodes sharing this node's store, from their heartbeats.

use axum::Json;
use axum::extract::State;

use shoal_protocol::{NodeList, NodeView};

use crate::AppState;
use crate::auth::{Auth, Reader};
use crate::error::ApiError;

/// Every node sharing this node's store, this one first: address, version,
/// start, latest heartbeat, running invocations, workers, load, and whether
/// it is `alive` or `lost` (silent for three heartbeats). With a store only
/// this node uses, the list is this node.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = NodeList)))]
pub(crate) async fn list(
    _: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<NodeList>, ApiError> {
    let nodes = state.handle.nodes().await?;
    Ok(Json(NodeList {
        nodes: nodes.into_iter().map(view).collect(),
    }))
}

fn view(n: shoal_engine::NodeView) -> NodeView {
    let r = n.record;
    NodeView {
        id: r.id,
        address: r.address,
        version: r.version,
        started_at_ms: r.started_at_ms,
        last_seen_ms: r.last_seen_ms,
        running: r.running,
        workers: r.workers,
        // JSON has no NaN or infinity.
        load: r.load.filter(|l| l.is_finite()),
        this: n.this,
        state: if n.alive { "alive" } else { "lost" }.to_string(),
    }
}
