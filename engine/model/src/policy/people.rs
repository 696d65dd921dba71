//! Users, their roles and API tokens, and groups of users.

use crate::Span;
use crate::parse::{Checker, closest, get, join};
use crate::yaml::Node;
use indexmap::IndexMap;
use serde::Serialize;

/// The keys of a user, from [`User`] (see `crate::schema::keys`).
pub(super) static USER_KEYS: std::sync::LazyLock<Vec<&str>> = std::sync::LazyLock::new(crate::schema::keys::<User>);

/// What a user may do through airlock's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read runs, logs and artifacts.
    Viewer,
    /// Start and cancel runs.
    Runner,
    /// Decide approvals of the environments whose approver groups they are in.
    Approver,
    /// Everything, including tokens.
    Admin,
}

impl Role {
    /// Every role, by name.
    pub const ALL: &[(&str, Role)] =
        &[("viewer", Role::Viewer), ("runner", Role::Runner), ("approver", Role::Approver), ("admin", Role::Admin)];

    /// The role's name, as the policy writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Runner => "runner",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// A person (or a robot) who uses airlock's API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct User {
    /// The sha256 (hex) of the user's API token; the token itself is
    /// never in the policy.
    pub token_sha256: String,
    /// What the user may do.
    pub roles: Vec<Role>,
    /// Whether the runs the user starts (by hand, through the API or with
    /// `airlock run` and the user's token) are trusted: `false` makes them
    /// untrusted, as a fork's pull request is (no publishing, no
    /// deploying, a step cache scope of their own).
    #[serde(default = "crate::pipeline::yes", skip_serializing_if = "crate::pipeline::is_yes")]
    pub trusted: bool,
    /// Where the user's name was written.
    #[serde(skip)]
    pub span: Span,
}

pub(super) fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn users(c: &mut Checker<'_>, node: &Node) -> IndexMap<String, User> {
    let mut out: IndexMap<String, User> = IndexMap::new();
    for (key, value) in c.map(node, "users", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("users.{name}");
        c.name(name, "user name", &path, key.span);
        let entries = c.map(value, &path, Some(&USER_KEYS));
        let token_sha256 = match get(entries, "token_sha256") {
            Some(t) => {
                let tpath = join(&path, "token_sha256");
                let text = c.scalar(t, &tpath).unwrap_or_default();
                if !is_digest(text) {
                    c.error(
                        "bad-digest",
                        &tpath,
                        t.span,
                        format!("`{}` is not a sha256 digest", crate::text::one_line(text, 80)),
                        Some(
                            "put the sha256 of the user's token here, never the token: `airlock user token` makes both"
                                .into(),
                        ),
                    );
                } else if let Some((other, _)) = out.iter().find(|(_, u)| u.token_sha256 == text) {
                    c.error(
                        "duplicate-token",
                        &tpath,
                        t.span,
                        format!("user `{name}` has the same token as `{other}`"),
                        Some("each user needs a token of their own".into()),
                    );
                }
                text.to_owned()
            }
            None => {
                c.error(
                    "missing-key",
                    &join(&path, "token_sha256"),
                    key.span,
                    format!("user `{name}` has no `token_sha256`"),
                    Some("`airlock user token` makes a token and the line to put here".into()),
                );
                String::new()
            }
        };
        let mut roles = Vec::new();
        let names: Vec<&str> = Role::ALL.iter().map(|(n, _)| *n).collect();
        for (role, span, rpath) in get(entries, "roles").map(|r| c.list(r, &join(&path, "roles"))).unwrap_or_default() {
            match Role::ALL.iter().find(|(n, _)| *n == role) {
                Some((_, r)) if !roles.contains(r) => roles.push(*r),
                Some(_) => c.error("duplicate-entry", &rpath, span, format!("`{role}` is listed twice"), None),
                None => {
                    let hint = match closest(role, &names) {
                        Some(k) => format!("did you mean `{k}`?"),
                        None => format!("the roles are: {}", names.join(", ")),
                    };
                    c.error("unknown-role", &rpath, span, format!("unknown role `{role}`"), Some(hint));
                }
            }
        }
        let trusted = get(entries, "trusted").map_or(Some(true), |t| c.boolean(t, &join(&path, "trusted")));
        out.insert(name.to_owned(), User { token_sha256, roles, trusted: trusted.unwrap_or(true), span: key.span });
    }
    out
}

pub(crate) fn groups(
    c: &mut Checker<'_>,
    node: &Node,
    users: &IndexMap<String, User>,
) -> IndexMap<String, Vec<String>> {
    let mut out = IndexMap::new();
    let user_names: Vec<&str> = users.keys().map(String::as_str).collect();
    for (key, value) in c.map(node, "groups", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("groups.{name}");
        c.name(name, "group name", &path, key.span);
        let mut members = Vec::new();
        for (member, span, mpath) in c.list(value, &path) {
            if !users.contains_key(member) {
                let hint = match closest(member, &user_names) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => "group members are users named under `users:`".into(),
                };
                c.error("unknown-user", &mpath, span, format!("`{member}` is not a user"), Some(hint));
            } else if members.iter().any(|m| m == member) {
                c.error("duplicate-entry", &mpath, span, format!("`{member}` is listed twice"), None);
            } else {
                members.push(member.to_owned());
            }
        }
        out.insert(name.to_owned(), members);
    }
    out
}
