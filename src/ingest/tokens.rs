//! Upload credentials: the tokens file and the check of a presented token against a site.
//!
//! The file holds one line per token, `<sha256 of the token, hex> <site>[,<site>…]` (`*` for
//! every site), `#` comments and blank lines allowed. It holds no secret: a leaked file does not
//! let anyone upload. `vigil ingest hash-token` makes a new token and its line.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Sites one token may publish for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sites {
    All,
    Only(Vec<String>),
}

impl Sites {
    fn allows(&self, site: &str) -> bool {
        match self {
            Sites::All => true,
            Sites::Only(list) => list.iter().any(|s| s == site),
        }
    }
}

/// The credentials, keyed by the token's sha256.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Sites>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A token that is not in the file (401).
    Unknown,
    /// A known token that may not publish for this site (403).
    WrongSite,
}

/// Which credential made a request: the first 8 hex digits of its hash, safe to log and to
/// use as a rate-limit key.
pub type CredentialId = String;

/// The sha256 of a token, hex.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Reads the tokens file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--tokens {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("--tokens {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut by_hash = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let n = i + 1;
            let mut parts = line.split_whitespace();
            let (Some(hash), Some(sites), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "line {n}: expected `<sha256 hex> <site>[,<site>…]`"
                ));
            };
            let key = unhex(&hash.to_ascii_lowercase()).ok_or_else(|| {
                format!("line {n}: `{hash}` is not a sha256 in hex (64 digits); `vigil ingest hash-token` makes one")
            })?;
            let sites = if sites == "*" {
                Sites::All
            } else {
                let list: Vec<String> = sites
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if list.is_empty() || list.iter().any(|s| s == "*") {
                    return Err(format!("line {n}: sites must be `*` or a list of site ids"));
                }
                Sites::Only(list)
            };
            if by_hash.insert(key, sites).is_some() {
                return Err(format!("line {n}: the same token hash appears twice"));
            }
        }
        if by_hash.is_empty() {
            return Err("no tokens: every upload would be refused".into());
        }
        Ok(Tokens { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Checks an `Authorization` header value for `site`.
    pub fn check(&self, authorization: Option<&str>, site: &str) -> Result<CredentialId, Denied> {
        let value = authorization.ok_or(Denied::Missing)?.trim();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let sites = self.by_hash.get(&digest).ok_or(Denied::Unknown)?;
        if !sites.allows(site) {
            return Err(Denied::WrongSite);
        }
        Ok(hex(&digest[..4]))
    }
}

/// A new random token (32 bytes from the OS, hex) and its tokens-file line for `sites`.
pub fn new_token(sites: &str) -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let token = hex(&bytes);
    let line = format!("{} {sites}", hash_token(&token));
    Tokens::parse(&line).map_err(|e| format!("--sites {sites}: {e}"))?;
    Ok((token, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_publishes_only_for_its_sites() {
        let text = format!(
            "# kitchen cameras of two sites\n{} site-a,site-b\n\n{}  *  # head office\n",
            hash_token("camera-token"),
            hash_token("admin-token")
        );
        let t = Tokens::parse(&text).unwrap();
        assert_eq!(t.len(), 2);
        let ok = t.check(Some("Bearer camera-token"), "site-a").unwrap();
        assert_eq!(ok.len(), 8);
        assert!(t.check(Some("Bearer camera-token"), "site-b").is_ok());
        assert_eq!(
            t.check(Some("Bearer camera-token"), "site-c"),
            Err(Denied::WrongSite)
        );
        assert!(t.check(Some("Bearer admin-token"), "anything").is_ok());
        assert_eq!(t.check(Some("Bearer nope"), "site-a"), Err(Denied::Unknown));
        assert_eq!(t.check(None, "site-a"), Err(Denied::Missing));
        assert_eq!(t.check(Some("Basic abc"), "site-a"), Err(Denied::Missing));
        assert_eq!(t.check(Some("Bearer "), "site-a"), Err(Denied::Missing));
    }

    #[test]
    fn bad_files_name_the_line() {
        assert!(Tokens::parse("abc site-a").unwrap_err().contains("line 1"));
        let h = hash_token("x");
        assert!(Tokens::parse(&format!("\n{h}\n"))
            .unwrap_err()
            .contains("line 2"));
        assert!(Tokens::parse(&format!("{h} a\n{h} b"))
            .unwrap_err()
            .contains("twice"));
        assert!(Tokens::parse(&format!("{h} a,*")).is_err());
        assert!(Tokens::parse("# nothing\n")
            .unwrap_err()
            .contains("no tokens"));
    }

    #[test]
    fn new_tokens_are_random_and_their_lines_parse() {
        let (t1, line) = new_token("site-a").unwrap();
        let (t2, _) = new_token("*").unwrap();
        assert_ne!(t1, t2);
        let tokens = Tokens::parse(&line).unwrap();
        assert!(tokens
            .check(Some(&format!("Bearer {t1}")), "site-a")
            .is_ok());
        assert!(!line.contains(&t1));
    }
}
