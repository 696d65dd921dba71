//! Pools of agents: machines that run sandboxed steps for the servers,
//! each pool with its token, the labels its agents may have, and the
//! environments whose steps they may run.

use crate::Span;
use crate::parse::{Checker, get, join};
use crate::yaml::Node;
use indexmap::IndexMap;
use serde::Serialize;

/// The keys of a pool, from [`AgentPool`].
static POOL_KEYS: std::sync::LazyLock<Vec<&str>> = std::sync::LazyLock::new(crate::schema::keys::<AgentPool>);

/// Agents that share a token: `airlock agent` processes an admin runs
/// on machines of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AgentPool {
    /// The sha256 (hex) of the pool's token, which each of its agents
    /// presents; the token itself is never in the policy
    /// (`airlock user token` makes one).
    pub token_sha256: String,
    /// The labels its agents may have (`airlock agent --label`): a step
    /// that `runs_on` labels goes to an agent with all of them.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::list")]
    pub labels: Vec<String>,
    /// The environments whose pipelines' steps its agents may run. Steps
    /// of pipelines without an environment may run on any pool's agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::list")]
    pub environments: Vec<String>,
    /// Where the pool's name was written.
    #[serde(skip)]
    pub span: Span,
}

impl AgentPool {
    /// Whether its agents may run the steps of a pipeline of `environment`.
    pub fn serves(&self, environment: Option<&str>) -> bool {
        environment.is_none_or(|e| self.environments.iter().any(|x| x == e))
    }
}

pub(crate) fn agents(
    c: &mut Checker<'_>,
    node: &Node,
    environments: &IndexMap<String, super::Environment>,
    users: &IndexMap<String, super::User>,
) -> IndexMap<String, AgentPool> {
    let mut out: IndexMap<String, AgentPool> = IndexMap::new();
    for (key, value) in c.map(node, "agents", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("agents.{name}");
        c.name(name, "pool name", &path, key.span);
        let entries = c.map(value, &path, Some(&POOL_KEYS));
        let tpath = join(&path, "token_sha256");
        let token_sha256 = match get(entries, "token_sha256") {
            Some(t) => {
                let text = c.scalar(t, &tpath).unwrap_or_default().to_owned();
                if !super::people::is_digest(&text) {
                    c.error(
                        "bad-digest",
                        &tpath,
                        t.span,
                        format!("`{}` is not a sha256 digest", crate::text::one_line(&text, 80)),
                        Some(
                            "put the sha256 of the pool's token here, never the token: `airlock user token` makes both"
                                .into(),
                        ),
                    );
                } else if out.values().any(|p| p.token_sha256 == text) || users.values().any(|u| u.token_sha256 == text)
                {
                    c.error(
                        "duplicate-token",
                        &tpath,
                        t.span,
                        format!("pool `{name}` has the token of another pool or of a user"),
                        Some("each pool needs a token of its own, which no user has".into()),
                    );
                }
                text
            }
            None => {
                c.error(
                    "missing-key",
                    &tpath,
                    key.span,
                    format!("pool `{name}` has no `token_sha256`"),
                    Some("`airlock user token` makes a token and the digest to put here".into()),
                );
                String::new()
            }
        };
        let mut labels = Vec::new();
        for (label, span, lpath) in
            get(entries, "labels").map(|l| c.list(l, &join(&path, "labels"))).unwrap_or_default()
        {
            c.name(label, "label", &lpath, span);
            if labels.iter().any(|l| l == label) {
                c.error("duplicate-entry", &lpath, span, format!("`{label}` is listed twice"), None);
            } else {
                labels.push(label.to_owned());
            }
        }
        let mut allowed = Vec::new();
        let known: Vec<&str> = environments.keys().map(String::as_str).collect();
        for (env, span, epath) in
            get(entries, "environments").map(|e| c.list(e, &join(&path, "environments"))).unwrap_or_default()
        {
            if !environments.contains_key(env) {
                let hint = match crate::parse::closest(env, &known) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => "name environments of `environments:`".into(),
                };
                c.error("unknown-environment", &epath, span, format!("no environment `{env}`"), Some(hint));
            } else if allowed.iter().any(|e| e == env) {
                c.error("duplicate-entry", &epath, span, format!("`{env}` is listed twice"), None);
            } else {
                allowed.push(env.to_owned());
            }
        }
        out.insert(name.to_owned(), AgentPool { token_sha256, labels, environments: allowed, span: key.span });
    }
    out
}
