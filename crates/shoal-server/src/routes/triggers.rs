//! `/v1/triggers`: the `[[trigger]]` entries of the live versions.

use axum::Json;
use axum::extract::State;

use shoal_engine::{OutcomeWhen, TriggerRecord};
use shoal_protocol::{TriggerList, TriggerView};

use crate::AppState;
use crate::auth::{Auth, Reader};
use crate::error::ApiError;

/// Every `[[trigger]]` of every live version, by function and index: what
/// runs the function (`docs` changes in a category, `blob` events under a
/// prefix, the `outcome` of another function) and its settings.
#[utoipa::path(get, path = "/v1/triggers", tag = "triggers",
    responses((status = 200, body = TriggerList)))]
pub(crate) async fn list(
    auth: Auth<Reader>,
    State(state): State<AppState>,
) -> Result<Json<TriggerList>, ApiError> {
    Ok(Json(TriggerList {
        items: state
            .handle
            .triggers()
            .into_iter()
            // A scoped token sees the triggers of its functions.
            .filter(|t| auth.allows(shoal_engine::Resource::Function(&t.function)))
            .map(view)
            .collect(),
    }))
}

fn view(v: shoal_engine::TriggerView) -> TriggerView {
    let mut out = TriggerView {
        function: v.function,
        version: v.version,
        index: v.index as u64,
        on: String::new(),
        category: None,
        batch_size: None,
        batch_window_ms: None,
        prefix: None,
        events: None,
        source: None,
        when: None,
    };
    match v.trigger {
        TriggerRecord::Docs {
            category,
            batch_size,
            batch_window_ms,
        } => {
            out.on = "docs".into();
            out.category = Some(category);
            out.batch_size = Some(batch_size);
            out.batch_window_ms = Some(batch_window_ms);
        }
        TriggerRecord::Blob {
            prefix,
            created,
            deleted,
        } => {
            out.on = "blob".into();
            out.prefix = Some(prefix);
            let mut events = Vec::new();
            if created {
                events.push("created".to_string());
            }
            if deleted {
                events.push("deleted".to_string());
            }
            out.events = Some(events);
        }
        TriggerRecord::Outcome { function, when } => {
            out.on = "outcome".into();
            out.source = Some(function);
            out.when = Some(
                match when {
                    OutcomeWhen::Success => "success",
                    OutcomeWhen::Failure => "failure",
                    OutcomeWhen::Any => "any",
                }
                .to_string(),
            );
        }
    }
    out
}
