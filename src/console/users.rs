//! The console's users file (`--users FILE`): who may sign in, with which role, seeing which
//! sites. Outside tools write it, in this shape:
//!
//! ```toml
//! [[user]]
//! name = "ana"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # `vigil console hash-password`
//! role = "manager"                                     # manager | district | admin
//! sites = ["site-001"]
//! ```
//!
//! A `manager` sees the sites listed; a `district` manager sees the group of sites listed in
//! `sites` too (the district's restaurants), and gets a ranking of them on the scorecard; an
//! `admin` sees every site (`sites` is ignored). Passwords are only ever stored as argon2id PHC
//! strings: a file with anything else in `password_hash` (a plaintext password, another
//! algorithm) is refused at start-up, naming the user and the line.
//!
//! Verification ([`Users::verify`]) is argon2 (RustCrypto's `argon2`), tens of milliseconds of
//! CPU: callers run it on the blocking pool.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;

/// What a user may do and see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A restaurant manager: their own sites.
    Manager,
    /// A district manager: a group of sites, ranked against each other.
    District,
    /// Every site.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::District => "district",
            Role::Admin => "admin",
        }
    }
}

/// Which sites a viewer may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every site (admins, and the console without `--users` on loopback).
    All,
    /// These sites only.
    Sites(BTreeSet<String>),
}

impl Access {
    /// Whether a record of `site` may be shown.
    pub fn allows(&self, site: &str) -> bool {
        match self {
            Access::All => true,
            Access::Sites(s) => s.contains(site),
        }
    }

    /// The sites listed, or `None` for every site (for SQL filters).
    pub fn sites(&self) -> Option<&BTreeSet<String>> {
        match self {
            Access::All => None,
            Access::Sites(s) => Some(s),
        }
    }
}

/// A user who may sign in.
#[derive(Debug, Clone)]
pub struct User {
    /// The sign-in name (`username` on the form), unique in the file.
    pub name: String,
    /// The argon2id PHC string the password is checked against.
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
    /// What the user may see, from the role and `sites`.
    pub access: Access,
}

/// The users file, loaded and checked.
#[derive(Debug, Clone, Default)]
pub struct Users {
    /// Users by name.
    by_name: HashMap<String, User>,
}

/// One `[[user]]` table as written; spans give the line of a bad value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password_hash: toml::Spanned<String>,
    role: Role,
    #[serde(default)]
    sites: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A stand-in hash, verified when the user is unknown so that an unknown name takes as long as
/// a wrong password (no user enumeration by timing).
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$dmlnaWwtZGVjb3ktc2FsdA$LJqL5Zbq7i9n6ZsLgh6B4zG4G8Q0o4h3pK5oG2u2V4c";

impl Users {
    /// Reads and checks `path` (`--users`).
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--users {}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("--users {}: {e}", path.display()))
    }

    /// Parses a users file's text; errors name the line and the user.
    pub fn parse(text: &str) -> Result<Users, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_name = HashMap::new();
        for u in file.user {
            let line = line_of(text, u.password_hash.span().start);
            let hash = u.password_hash.into_inner();
            match PasswordHash::new(&hash) {
                Ok(h) if h.algorithm.as_str() == "argon2id" => {}
                Ok(h) => {
                    return Err(format!(
                        "line {line}: user {:?}: password_hash uses {}, not argon2id (make one with `vigil console hash-password`)",
                        u.name, h.algorithm
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "line {line}: user {:?}: password_hash is not an argon2id PHC string (a plaintext password?); make one with `vigil console hash-password`",
                        u.name
                    ))
                }
            }
            if u.name.is_empty() {
                return Err(format!("line {line}: a user without a name"));
            }
            let access = match u.role {
                Role::Admin => Access::All,
                Role::Manager | Role::District => {
                    if u.sites.is_empty() {
                        return Err(format!(
                            "line {line}: user {:?} ({}) has no sites",
                            u.name,
                            u.role.as_str()
                        ));
                    }
                    Access::Sites(u.sites.into_iter().collect())
                }
            };
            let user = User {
                name: u.name.clone(),
                password_hash: hash,
                role: u.role,
                access,
            };
            if by_name.insert(u.name.clone(), user).is_some() {
                return Err(format!("line {line}: user {:?} appears twice", u.name));
            }
        }
        Ok(Users { by_name })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// The user, if `password` is theirs. Slow on purpose (argon2): call on the blocking pool.
    pub fn verify(&self, name: &str, password: &str) -> Option<User> {
        let user = self.by_name.get(name);
        let hash = user.map_or(DECOY_HASH, |u| u.password_hash.as_str());
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        if ok {
            user.cloned()
        } else {
            None
        }
    }
}

/// An argon2id PHC string of `password` with a fresh salt (argon2's default parameters:
/// m=19456 KiB, t=2, p=1, OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(hash: &str) -> String {
        format!(
            "[[user]]\nname = \"ana\"\npassword_hash = \"{hash}\"\nrole = \"manager\"\nsites = [\"site-001\"]\n\n[[user]]\nname = \"root\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"
        )
    }

    #[test]
    fn a_hashed_file_loads_and_verifies() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        let users = Users::parse(&file(&hash)).unwrap();
        assert_eq!(users.len(), 2);
        let ana = users.verify("ana", "correct horse").unwrap();
        assert_eq!(ana.role, Role::Manager);
        assert!(ana.access.allows("site-001") && !ana.access.allows("site-002"));
        assert!(users.verify("ana", "wrong").is_none());
        assert!(users.verify("nobody", "correct horse").is_none());
        assert_eq!(users.get("root").unwrap().access, Access::All);
    }

    #[test]
    fn a_plaintext_password_is_refused_naming_the_line_and_user() {
        let e = Users::parse(&file("hunter2")).unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("\"ana\"") && e.contains("plaintext"),
            "{e}"
        );
        let scrypt = "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
        let e = Users::parse(&file(scrypt)).unwrap_err();
        assert!(e.contains("line 3") && e.contains("argon2id"), "{e}");
        // The stand-in for unknown users is a well-formed hash (verified like a real one).
        assert!(PasswordHash::new(DECOY_HASH).is_ok());
    }

    #[test]
    fn managers_need_sites_and_names_are_unique() {
        let hash = hash_password("x").unwrap();
        let e = Users::parse(&format!(
            "[[user]]\nname = \"bo\"\npassword_hash = \"{hash}\"\nrole = \"district\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("no sites"), "{e}");
        let twice = format!(
            "[[user]]\nname = \"bo\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n[[user]]\nname = \"bo\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"
        );
        assert!(Users::parse(&twice).unwrap_err().contains("twice"));
        assert!(Users::parse("[[user]]\nname = 1\n").is_err());
    }
}
