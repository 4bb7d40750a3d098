//! Identities from a trusted reverse proxy that already authenticates (oauth2-proxy, Pomerium,
//! Authelia and the like): the user's name in `X-Forwarded-User` and their groups in
//! `X-Forwarded-Groups` (comma-separated), believed only on requests whose peer address is one
//! of `--trusted-proxy` (from anywhere else the headers are ignored, so a client cannot name
//! itself).
//!
//! A user named in the users file gets their role and sites from it. Anyone else gets them from
//! their groups: `vigil-admin` (every site), `vigil-district` (district role), and
//! `vigil-site:<site>` for each site they hold; a user with neither sites nor `vigil-admin`
//! sees nothing and is refused (403).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::users::{Access, Role, Users};

/// Where proxy identities are read from.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Peer addresses whose identity headers are believed (`--trusted-proxy`); empty: none.
    pub trusted: Vec<IpAddr>,
    /// The header naming the user (`--proxy-user-header`, lower case).
    pub user_header: String,
    /// The header listing the user's groups (`--proxy-groups-header`, lower case).
    pub groups_header: String,
}

/// The group that makes an admin.
pub const ADMIN_GROUP: &str = "vigil-admin";
/// The group that makes a district manager.
pub const DISTRICT_GROUP: &str = "vigil-district";
/// The prefix of a group naming one site.
pub const SITE_GROUP_PREFIX: &str = "vigil-site:";

/// The role and sites of a proxy-authenticated user; `None`: they hold no site.
pub fn role_of(users: Option<&Users>, name: &str, groups: &str) -> Option<(Role, Access)> {
    if let Some(u) = users.and_then(|u| u.get(name)) {
        return Some((u.role, u.access.clone()));
    }
    let groups: Vec<&str> = groups
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    if groups.contains(&ADMIN_GROUP) {
        return Some((Role::Admin, Access::All));
    }
    let sites: BTreeSet<String> = groups
        .iter()
        .filter_map(|g| g.strip_prefix(SITE_GROUP_PREFIX))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if sites.is_empty() {
        return None;
    }
    let role = if groups.contains(&DISTRICT_GROUP) {
        Role::District
    } else {
        Role::Manager
    };
    Some((role, Access::Sites(sites)))
}

/// Per-user CSRF tokens of proxy-authenticated users (they have no session to hold one).
#[derive(Debug, Default)]
pub struct ProxyTokens {
    /// Tokens by user name, random, made on first sight.
    by_user: HashMap<String, String>,
}

impl ProxyTokens {
    /// The user's token, made on first sight.
    pub fn token(&mut self, name: &str) -> String {
        if self.by_user.len() > 100_000 {
            // Bounded: users seen long ago get a new token (their open forms fail once).
            self.by_user.clear();
        }
        self.by_user
            .entry(name.to_string())
            .or_insert_with(super::auth::random_token)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_give_roles_and_sites_unless_the_users_file_names_the_user() {
        assert_eq!(
            role_of(None, "x", "staff, vigil-admin"),
            Some((Role::Admin, Access::All))
        );
        assert_eq!(
            role_of(None, "x", "vigil-site:site-001,vigil-site:site-002"),
            Some((
                Role::Manager,
                Access::Sites(["site-001".to_string(), "site-002".to_string()].into())
            ))
        );
        assert_eq!(
            role_of(None, "x", "vigil-district,vigil-site:a").map(|r| r.0),
            Some(Role::District)
        );
        assert_eq!(role_of(None, "x", "staff,vigil-site:"), None);
        assert_eq!(role_of(None, "x", ""), None);
        let hash = super::super::users::hash_password("p").unwrap();
        let users = Users::parse(&format!(
            "[[user]]\nname = \"ana\"\npassword_hash = \"{hash}\"\nrole = \"manager\"\nsites = [\"site-001\"]\n"
        ))
        .unwrap();
        assert_eq!(
            role_of(Some(&users), "ana", "vigil-admin"),
            Some((
                Role::Manager,
                Access::Sites(["site-001".to_string()].into())
            ))
        );
        let mut t = ProxyTokens::default();
        assert_eq!(t.token("ana"), t.token("ana"));
        assert_ne!(t.token("ana"), t.token("bo"));
    }
}
