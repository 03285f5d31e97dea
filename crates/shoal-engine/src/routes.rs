//! Function routes: `[[route]]` of `shoal.toml` (parsed and checked here),
//! the node's table of live routes, and their per-client rate limits.
//!
//! The table holds the routes of every live version, one `matchit` tree
//! per method (a `*` route is in every tree), and is rebuilt whole whenever
//! the live versions change. Two routes of one method whose paths overlap
//! (a `matchit` insert conflict) cannot both be live: a deploy or rollback
//! that would make them so is refused, naming the other function.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use shoal_store::{RouteCors, RouteRate, RouteRecord};

/// The methods a route may name; `*` stands for all of them.
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Path prefixes the node serves itself; no route may be under one.
pub const RESERVED_PREFIXES: [&str; 4] = ["/v1", "/healthz", "/metrics", "/ui"];

/// Most routes one function may declare.
pub const MAX_ROUTES: usize = 100;
/// Longest route path.
pub const MAX_PATH: usize = 1000;

/// True when `path` is one of the reserved prefixes or under one.
pub fn is_reserved(path: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// A request matched to a live route.
#[derive(Debug, Clone)]
pub struct RouteHit {
    /// The function serving it (its live version runs).
    pub function: String,
    pub route: RouteRecord,
    /// The path parameters, as they appear in the path (still
    /// percent-encoded), in the pattern's order.
    pub params: Vec<(String, String)>,
}

/// What the route table says of a request.
#[derive(Debug, Clone)]
pub enum RouteMatch {
    Hit(RouteHit),
    /// Routes serve the path, but none with this method: these do.
    OtherMethods(Vec<&'static str>),
    None,
}

/// The live routes of a node.
#[derive(Default, Clone)]
pub(crate) struct RouteTable {
    /// Per method: the tree, and what was inserted in it (pattern, entry).
    trees: HashMap<&'static str, Tree>,
    /// (function, route) by entry number.
    entries: Vec<(String, RouteRecord)>,
}

/// One method's tree, and what was inserted in it: (pattern, entry).
type Tree = (matchit::Router<usize>, Vec<(String, usize)>);

/// A route that overlaps a live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) function: String,
    pub(crate) other_path: String,
}

impl RouteTable {
    /// The table of these functions' routes, added in the given order; a
    /// route that overlaps one added before it is left out and returned.
    pub(crate) fn build<'a>(
        functions: impl IntoIterator<Item = (&'a str, &'a [RouteRecord])>,
    ) -> (RouteTable, Vec<Overlap>) {
        let mut table = RouteTable::default();
        let mut left_out = Vec::new();
        for (function, routes) in functions {
            for route in routes {
                if let Err(o) = table.add(function, route) {
                    left_out.push(o);
                }
            }
        }
        (table, left_out)
    }

    /// The first of `routes` (of `function`) that overlaps a route in the
    /// table, if any. The table is left as it was.
    pub(crate) fn overlap(&self, function: &str, routes: &[RouteRecord]) -> Option<Overlap> {
        let mut trial = self.clone();
        routes.iter().find_map(|r| trial.add(function, r).err())
    }

    /// Adds a route to every tree of its methods, or to none when it
    /// overlaps a route there.
    fn add(&mut self, function: &str, route: &RouteRecord) -> Result<(), Overlap> {
        let entry = self.entries.len();
        let mut added = Vec::new();
        for method in methods_of(&route.method) {
            let (tree, inserted) = self.trees.entry(method).or_default();
            match tree.insert(route.path.clone(), entry) {
                Ok(()) => {
                    inserted.push((route.path.clone(), entry));
                    added.push(method);
                }
                Err(e) => {
                    let overlap = self.describe(method, route, e);
                    // A failed insert may leave a tree half changed: the
                    // trees touched are built again from what they hold.
                    self.rebuild_tree(method);
                    for m in added {
                        if let Some((_, inserted)) = self.trees.get_mut(m) {
                            inserted.pop();
                        }
                        self.rebuild_tree(m);
                    }
                    return Err(overlap);
                }
            }
        }
        self.entries.push((function.to_string(), route.clone()));
        Ok(())
    }

    fn rebuild_tree(&mut self, method: &'static str) {
        if let Some((tree, inserted)) = self.trees.get_mut(method) {
            let mut fresh = matchit::Router::new();
            for (pattern, entry) in inserted.iter() {
                let _ = fresh.insert(pattern.clone(), *entry);
            }
            *tree = fresh;
        }
    }

    /// Which live route `route` overlaps in `method`'s tree: each live
    /// pattern is tried alone against it, so the answer names the very
    /// route (matchit's own message names a prefix of the tree).
    fn describe(
        &self,
        method: &'static str,
        route: &RouteRecord,
        err: matchit::InsertError,
    ) -> Overlap {
        let with = match err {
            matchit::InsertError::Conflict { with } => with,
            other => other.to_string(),
        };
        let inserted = self
            .trees
            .get(method)
            .map(|(_, i)| i.as_slice())
            .unwrap_or(&[]);
        let found = inserted
            .iter()
            .find(|(pattern, _)| {
                let mut pair = matchit::Router::new();
                let _ = pair.insert(pattern.clone(), ());
                pair.insert(route.path.clone(), ()).is_err()
            })
            .or_else(|| inserted.iter().find(|(p, _)| *p == with));
        match found {
            Some((pattern, entry)) => Overlap {
                method,
                path: route.path.clone(),
                function: self.entries[*entry].0.clone(),
                other_path: pattern.clone(),
            },
            None => Overlap {
                method,
                path: route.path.clone(),
                function: "another function".into(),
                other_path: with,
            },
        }
    }

    /// The route serving `method` `path`.
    pub(crate) fn find(&self, method: &str, path: &str) -> RouteMatch {
        if let Some(hit) = self.at(method, path) {
            return RouteMatch::Hit(hit);
        }
        let others: Vec<&'static str> = METHODS
            .into_iter()
            .filter(|m| *m != method && self.at(m, path).is_some())
            .collect();
        if others.is_empty() {
            RouteMatch::None
        } else {
            RouteMatch::OtherMethods(others)
        }
    }

    fn at(&self, method: &str, path: &str) -> Option<RouteHit> {
        let (tree, _) = self.trees.get(method)?;
        let found = tree.at(path).ok()?;
        let (function, route) = &self.entries[*found.value];
        Some(RouteHit {
            function: function.clone(),
            route: route.clone(),
            params: found
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}

/// The methods a route's `method` stands for.
fn methods_of(method: &str) -> Vec<&'static str> {
    if method == "*" {
        METHODS.to_vec()
    } else {
        METHODS.into_iter().filter(|m| *m == method).collect()
    }
}

/// Per-client rate limits of routes: a GCRA arrival time per (route,
/// client address), in memory on each node.
///
/// The map is bounded: an entry whose arrival time has passed is the same
/// as no entry (a full bucket), so such entries are dropped whenever the
/// map reaches its bound; if it is still over half full then, the entries
/// closest to full are dropped too (their clients get a little more than
/// their burst once), so a flood of addresses costs bounded memory.
pub(crate) struct RouteLimits {
    tats: Mutex<HashMap<String, f64>>,
    max_entries: usize,
}

/// The most (route, client) pairs tracked by one node.
pub(crate) const MAX_LIMIT_ENTRIES: usize = 100_000;

impl RouteLimits {
    pub(crate) fn new(max_entries: usize) -> RouteLimits {
        RouteLimits {
            tats: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(2),
        }
    }

    /// Takes one call of `rate` for `key` at `now_ms`; or how long until
    /// one is allowed.
    pub(crate) fn take(&self, key: &str, rate: RouteRate, now_ms: u64) -> Result<(), Duration> {
        let interval = 1000.0 / rate.per_second;
        let window = interval * f64::from(rate.burst.max(1) - 1);
        let now = now_ms as f64;
        let mut tats = self.tats.lock().unwrap();
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        if tat - window > now {
            let wait = tat - window - now;
            return Err(Duration::from_micros(
                (wait * 1000.0).ceil().max(1000.0) as u64
            ));
        }
        if !tats.contains_key(key) && tats.len() >= self.max_entries {
            evict(&mut tats, now, self.max_entries / 2);
        }
        tats.insert(key.to_string(), tat + interval);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tats.lock().unwrap().len()
    }
}

/// Drops the idle entries, then the ones closest to idle until at most
/// `keep` are left.
fn evict(tats: &mut HashMap<String, f64>, now: f64, keep: usize) {
    tats.retain(|_, tat| *tat > now);
    if tats.len() > keep {
        let mut by_tat: Vec<(String, f64)> = tats.drain().collect();
        by_tat.sort_by(|a, b| b.1.total_cmp(&a.1));
        by_tat.truncate(keep);
        tats.extend(by_tat);
    }
}

/// `[[route]]` as written in `shoal.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    method: String,
    path: String,
    auth: Option<String>,
    rate_limit: Option<RawRate>,
    cors: Option<RawCors>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: f64,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    origins: Vec<String>,
    methods: Option<Vec<String>>,
    headers: Option<Vec<String>>,
    credentials: Option<bool>,
    max_age_s: Option<u32>,
}

/// Checks a function's `[[route]]` entries; the error says which entry and
/// what to change.
pub(crate) fn parse(raw: Vec<RawRoute>) -> Result<Vec<RouteRecord>, String> {
    if raw.len() > MAX_ROUTES {
        return Err(format!(
            "a function may declare at most {MAX_ROUTES} [[route]] entries, not {}",
            raw.len()
        ));
    }
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("[[route]] {} ({} {})", i + 1, r.method, r.path);
        routes.push(parse_one(r).map_err(|e| format!("{at}: {e}"))?);
    }
    let (_, overlaps) = RouteTable::build([("", routes.as_slice())]);
    if let Some(o) = overlaps.first() {
        return Err(format!(
            "[[route]] {} {} overlaps {} {} of the same function; give them distinct paths",
            o.method, o.path, o.method, o.other_path
        ));
    }
    Ok(routes)
}

fn parse_one(r: RawRoute) -> Result<RouteRecord, String> {
    let method = r.method.trim().to_ascii_uppercase();
    if method != "*" && !METHODS.contains(&method.as_str()) {
        return Err(format!(
            "method must be one of {} or \"*\" (any)",
            METHODS.join(", ")
        ));
    }
    let path = r.path;
    if !path.starts_with('/') || path.len() > MAX_PATH {
        return Err(format!(
            "path must start with / and be at most {MAX_PATH} characters"
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%'))
    {
        return Err(format!(
            "path may not hold {c:?}: it is matched against the path as sent, so use visible ASCII without '?', '#' or '%' (the query reaches the handler apart; other characters arrive percent-encoded: match them with a {{param}}, which the handler gets decoded)"
        ));
    }
    if is_reserved(&path) {
        return Err(format!(
            "path {path} is under a prefix the node serves itself ({}); choose another path",
            RESERVED_PREFIXES.join(", ")
        ));
    }
    if let Err(e) = matchit::Router::new().insert(path.clone(), ()) {
        return Err(format!(
            "path {path} is not a valid pattern ({e}); use {{name}} for a segment and {{*name}} for the rest of the path"
        ));
    }
    let public = match r.auth.as_deref() {
        None | Some("token") => false,
        Some("public") => true,
        Some(other) => {
            return Err(format!(
                "auth {other:?} is not known; use \"public\" or \"token\""
            ));
        }
    };
    let rate_limit = match r.rate_limit {
        None => None,
        Some(rate) => {
            if !(0.001..=1_000_000.0).contains(&rate.per_second) {
                return Err("rate_limit per_second must be between 0.001 and 1,000,000".to_string());
            }
            let burst = rate
                .burst
                .unwrap_or_else(|| (rate.per_second.ceil() as u32).max(1));
            if !(1..=1_000_000).contains(&burst) {
                return Err("rate_limit burst must be between 1 and 1,000,000".to_string());
            }
            Some(RouteRate {
                per_second: rate.per_second,
                burst,
            })
        }
    };
    let cors = r.cors.map(|c| parse_cors(c, &method)).transpose()?;
    Ok(RouteRecord {
        method,
        path,
        public,
        rate_limit,
        cors,
    })
}

fn parse_cors(c: RawCors, method: &str) -> Result<RouteCors, String> {
    if c.origins.is_empty() {
        return Err("cors origins must list at least one origin, or \"*\"".into());
    }
    for o in &c.origins {
        let valid = o == "*"
            || o.split_once("://").is_some_and(|(scheme, host)| {
                matches!(scheme, "http" | "https")
                    && !host.is_empty()
                    && !host.contains('/')
                    && host.chars().all(|c| c.is_ascii_graphic())
            });
        if !valid {
            return Err(format!(
                "cors origin {o:?} must be \"*\" or like \"https://example.com\" (a scheme and a host, optionally a port; no path)"
            ));
        }
    }
    let credentials = c.credentials.unwrap_or(false);
    if credentials && c.origins.iter().any(|o| o == "*") {
        return Err(
            "cors credentials = true needs the origins listed: browsers refuse \"*\" with credentials"
                .into(),
        );
    }
    let methods = match c.methods {
        Some(ms) => {
            let mut out = Vec::new();
            for m in ms {
                let m = m.trim().to_ascii_uppercase();
                if !METHODS.contains(&m.as_str()) {
                    return Err(format!(
                        "cors methods: {m:?} is not one of {}",
                        METHODS.join(", ")
                    ));
                }
                out.push(m);
            }
            out
        }
        None if method == "*" => METHODS.iter().map(|m| m.to_string()).collect(),
        None => vec![method.to_string()],
    };
    let mut headers = Vec::new();
    for h in c.headers.unwrap_or_default() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if h.is_empty() || !h.bytes().all(token) {
            return Err(format!("cors headers: {h:?} is not a header name"));
        }
        headers.push(h.to_ascii_lowercase());
    }
    let max_age_s = c.max_age_s.unwrap_or(600);
    if max_age_s > 86_400 {
        return Err("cors max_age_s must be at most 86400 (a day)".into());
    }
    Ok(RouteCors {
        origins: c.origins,
        methods,
        headers,
        credentials,
        max_age_s,
    })
}

#[cfg(test)]
mod tests;
