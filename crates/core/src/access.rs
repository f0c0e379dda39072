//! Who may do what in a project: `[project.permissions]` grants groups `read`, `run`, `write`
//! and `admin`. Instance admins may do everything; a project that grants nothing is theirs
//! alone. One function decides, so the API, the CLI and the data API cannot disagree.

use std::collections::BTreeSet;

use crate::model::{DEFAULT_RUN_AS, Home, Isolation, Permission};

/// Why a user may not do something in a project, in words fit for a 403.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    pub message: String,
}

/// The permissions `user` holds in `project` (through their groups), before implications:
/// `admin` gives all, `run` and `write` give `read` (see [`Permission::gives`]).
pub fn held(home: &Home, project: &str, user: &str) -> BTreeSet<Permission> {
    let (Some(p), Some(u)) = (home.projects.get(project), home.users.get(user)) else {
        return BTreeSet::new();
    };
    if u.admin {
        return Permission::ALL.into_iter().collect();
    }
    p.permissions
        .iter()
        .filter(|g| u.groups.iter().any(|ug| ug.value == g.group.value))
        .flat_map(|g| g.permissions.iter().copied())
        .collect()
}

/// Whether `user` (a user of `users.toml`; `admin` for an instance admin, who holds everything)
/// may do `wanted` in `project`, or why not.
pub fn check(
    home: &Home,
    project: &str,
    user: &str,
    admin: bool,
    wanted: Permission,
) -> Result<(), Denied> {
    if admin || held(home, project, user).iter().any(|p| p.gives(wanted)) {
        return Ok(());
    }
    let granted: Vec<String> = home
        .projects
        .get(project)
        .map(|p| {
            p.permissions
                .iter()
                .filter(|g| g.permissions.iter().any(|p| p.gives(wanted)))
                .map(|g| format!("`{}`", g.group.value))
                .collect()
        })
        .unwrap_or_default();
    let who = if granted.is_empty() {
        "no group has it; an instance admin can grant it in the project's `[project.permissions]`"
            .to_string()
    } else {
        format!("it is granted to groups {}", granted.join(", "))
    };
    Err(Denied {
        message: format!(
            "user `{user}` lacks the `{wanted}` permission on project `{project}` ({who})"
        ),
    })
}

/// Who a local recipe runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalIdentity {
    /// `isolation = "none"`: the daemon's own user, by the admin's explicit choice.
    Daemon,
    /// This Unix user; `chosen_by` says which setting named it, for messages.
    Unix { name: String, chosen_by: String },
}

/// The Unix user a local recipe of `user` (a user of `users.toml`, or none for the daemon's
/// local caller) runs as: the user's `run_as`, else `[instance] run_as`, else `nobody` — never
/// the daemon's own identity unless `isolation = "none"` says so.
pub fn local_identity(home: &Home, user: Option<&str>) -> LocalIdentity {
    if home.instance.isolation.as_ref().map(|i| i.value) == Some(Isolation::None) {
        return LocalIdentity::Daemon;
    }
    if let Some(u) = user.and_then(|u| home.users.get(u))
        && let Some(r) = &u.run_as
    {
        return LocalIdentity::Unix {
            name: r.value.clone(),
            chosen_by: format!("`run_as` of user `{}`", u.name),
        };
    }
    match &home.instance.run_as {
        Some(r) => LocalIdentity::Unix {
            name: r.value.clone(),
            chosen_by: "`[instance] run_as`".into(),
        },
        None => LocalIdentity::Unix {
            name: DEFAULT_RUN_AS.into(),
            chosen_by: "the default (no `run_as` is set)".into(),
        },
    }
}
