//! Credentials: bearer tokens, each belonging to a named grant.
//!
//! With tokens configured, every gRPC call (but health checks) and every MCP
//! HTTP request must carry `authorization: Bearer <token>`; the grant the
//! token belongs to is what `scope: grant` policy limits count by and what
//! audit rows and plugin sessions are tagged with. Tokens are compared in
//! constant time and never logged or printed: [`Tokens`]' `Debug` shows only
//! grant names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};

/// The grant name of a token given with `--token` / `PYTEST_MCP_TOKEN`.
pub const DEFAULT_GRANT: &str = "default";

/// The grant a request was authenticated as; put into request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant(pub String);

/// The configured tokens, by grant name.
#[derive(Clone)]
pub struct Tokens {
    /// (grant, token) pairs.
    entries: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grants: Vec<&str> = self.entries.iter().map(|(g, _)| g.as_str()).collect();
        f.debug_struct("Tokens")
            .field("grants", &grants)
            .finish_non_exhaustive()
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` header, or not a bearer one.
    Missing,
    /// A bearer token that is not configured.
    Invalid,
}

impl Refusal {
    /// The message a client is told (never the token).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "missing authorization metadata: expected `authorization: Bearer <token>`"
            }
            Refusal::Invalid => "invalid token",
        }
    }
}

impl Tokens {
    /// One token for the grant [`DEFAULT_GRANT`].
    pub fn single(token: &str) -> anyhow::Result<Self> {
        Self::from_pairs([(DEFAULT_GRANT.to_string(), token.to_string())], "--token")
    }

    /// Reads a JSON object mapping grant names to tokens, e.g.
    /// `{"ci": "…", "agent": "…"}`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let flag = format!("--tokens {}", path.display());
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read it"))?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let map: BTreeMap<String, String> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                // serde's message may quote the offending value: a token.
                // Name the place and the kind of problem only.
                let path = e.path().to_string();
                let inner = e.into_inner();
                anyhow::anyhow!(
                    "{flag}: {}expected a JSON object mapping grant names to token strings \
                     (line {}, column {})",
                    if path == "." {
                        String::new()
                    } else {
                        format!("{path}: ")
                    },
                    inner.line(),
                    inner.column()
                )
            })?;
        Self::from_pairs(map, &flag)
    }

    fn from_pairs(
        pairs: impl IntoIterator<Item = (String, String)>,
        flag: &str,
    ) -> anyhow::Result<Self> {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for (grant, token) in pairs {
            if grant.trim().is_empty() {
                bail!("{flag}: a grant name is empty");
            }
            if token.trim().is_empty() {
                bail!("{flag}: the token of grant {grant:?} is empty");
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!(
                    "{flag}: the token of grant {grant:?} contains whitespace or control \
                     characters; it cannot travel in an HTTP header"
                );
            }
            if let Some((other, _)) = entries.iter().find(|(_, t)| t == token.as_bytes()) {
                bail!(
                    "{flag}: grants {other:?} and {grant:?} have the same token; \
                     each grant needs its own"
                );
            }
            entries.push((grant, token.into_bytes()));
        }
        if entries.is_empty() {
            bail!("{flag}: no tokens");
        }
        Ok(Self { entries })
    }

    /// The grant names, in the order configured.
    pub fn grants(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(g, _)| g.as_str())
    }

    /// Authenticates an `authorization` header value.
    pub fn check(&self, header: Option<&[u8]>) -> Result<Grant, Refusal> {
        let token = header.and_then(bearer).ok_or(Refusal::Missing)?;
        // Every configured token is compared, whichever matches, so the time
        // taken does not tell which grant (or how much of a token) was hit.
        let mut found: Option<&str> = None;
        for (grant, expected) in &self.entries {
            if constant_time_eq(token, expected) && found.is_none() {
                found = Some(grant);
            }
        }
        found.map(|g| Grant(g.to_string())).ok_or(Refusal::Invalid)
    }
}

/// The token of a `Bearer <token>` header value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    // Walk the longer one whole; bytes past the shorter compare against 0.
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"a\0", b"a"));
    }

    #[test]
    fn a_bearer_header_maps_to_its_grant_and_others_are_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, r#"{"alice": "tok-a", "bob": "tok-b"}"#)?;
        let tokens = Tokens::from_file(&path)?;
        assert_eq!(tokens.check(Some(b"Bearer tok-b")), Ok(Grant("bob".into())));
        assert_eq!(
            tokens.check(Some(b"bearer  tok-a ")),
            Ok(Grant("alice".into()))
        );
        assert_eq!(tokens.check(Some(b"Bearer tok-c")), Err(Refusal::Invalid));
        assert_eq!(tokens.check(Some(b"Basic dG9rLWE=")), Err(Refusal::Missing));
        assert_eq!(tokens.check(Some(b"Bearer ")), Err(Refusal::Missing));
        assert_eq!(tokens.check(None), Err(Refusal::Missing));
        assert!(!format!("{tokens:?}").contains("tok-a"));
        Ok(())
    }

    #[test]
    fn empty_or_shared_tokens_are_refused_without_printing_them() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tokens.json");
        for (text, wanted) in [
            (r#"{"alice": ""}"#, "the token of grant \"alice\" is empty"),
            (
                r#"{"alice": "same-secret", "bob": "same-secret"}"#,
                "have the same token",
            ),
            (r#"{}"#, "no tokens"),
            (r#"{"alice": 7}"#, "alice: expected a JSON object"),
            (r#"["sekrit"]"#, "expected a JSON object"),
            (r#"{"alice": "has space"}"#, "whitespace"),
        ] {
            std::fs::write(&path, text)?;
            let err = Tokens::from_file(&path).expect_err(text).to_string();
            assert!(err.contains(wanted), "{text}: {err}");
            assert!(
                !err.contains("same-secret") && !err.contains("sekrit"),
                "{err}"
            );
        }
        assert!(Tokens::single("").is_err());
        Ok(())
    }
}
