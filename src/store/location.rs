//! Where the database is: a SQLite file, or a PostgreSQL URL.
//!
//! `--db` picks the backend by form. A value starting with `postgres://` or
//! `postgresql://` is a PostgreSQL URL and is never taken for a file name;
//! anything else is a path. A URL's password (in the URL, or `PGPASSWORD`)
//! reaches the driver only: [`PgUrl`]'s `Display` and every error show the
//! URL with the password replaced by `***`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// A database location.
#[derive(Clone)]
pub enum Location {
    /// A SQLite file, created with its parent directories on first use.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by any number of replicas.
    Postgres(Box<PgUrl>),
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Location::Postgres(u) => f.debug_tuple("Postgres").field(&u.redacted).finish(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(u) => write!(f, "{u}"),
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Sqlite(p)
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Sqlite(p.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Self {
        Location::Sqlite(p.clone())
    }
}

impl From<PgUrl> for Location {
    fn from(u: PgUrl) -> Self {
        Location::Postgres(Box::new(u))
    }
}

impl Location {
    /// Reads `--db`'s value: a PostgreSQL URL by its scheme, else a path.
    pub fn parse(value: &std::ffi::OsStr) -> Result<Location> {
        match value.to_str() {
            Some(text) if is_postgres_url(text) => Ok(Location::Postgres(Box::new(text.parse()?))),
            _ => Ok(Location::Sqlite(PathBuf::from(value))),
        }
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Location::Sqlite(p) => Some(p),
            Location::Postgres(_) => None,
        }
    }

    /// Whether the database is there already (a PostgreSQL database is
    /// assumed to be: connecting tells).
    pub fn exists(&self) -> bool {
        match self {
            Location::Sqlite(p) => p.exists(),
            Location::Postgres(_) => true,
        }
    }
}

/// Whether `text` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(text: &str) -> bool {
    let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// How the connection to PostgreSQL is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// Plain TCP (`sslmode=disable`, or `prefer` with no CA given).
    Off,
    /// TLS, the server's certificate checked against `ca` (a PEM file) or,
    /// without one, the system's trusted roots.
    On {
        /// The CA file (`sslrootcert=`, or `PGSSLROOTCERT`).
        ca: Option<PathBuf>,
    },
}

/// A parsed PostgreSQL URL.
#[derive(Clone)]
pub struct PgUrl {
    /// The driver's settings, password included.
    pub config: tokio_postgres::Config,
    /// How to encrypt.
    pub tls: PgTls,
    /// The URL as given, with its password replaced by `***`.
    redacted: String,
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PgUrl").field(&self.redacted).finish()
    }
}

impl PgUrl {
    /// The URL without its password, for messages.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

/// `text` with the password of its user info and any `password=` query
/// value replaced by `***`.
pub fn redact(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let (scheme, rest) = text.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

impl FromStr for PgUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<PgUrl> {
        let redacted = redact(text);
        let bad = |why: String| Error::invalid("--db", format!("{redacted}: {why}"));
        // The driver knows libpq's URL form but not every parameter: take
        // out the TLS ones it lacks (`sslrootcert`, the `verify-*` modes).
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut kept: Vec<&str> = Vec::new();
        let mut ca: Option<PathBuf> = std::env::var_os("PGSSLROOTCERT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let mut mode: Option<String> = std::env::var("PGSSLMODE").ok().filter(|v| !v.is_empty());
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "sslrootcert" => ca = Some(PathBuf::from(percent_decode(v))),
                "sslmode" => mode = Some(v.to_string()),
                _ => kept.push(kv),
            }
        }
        let tls = match mode.as_deref().unwrap_or("prefer") {
            "disable" => PgTls::Off,
            // Without a CA to check the server against there is nothing to
            // prefer TLS with; ask for it with sslmode=require.
            "prefer" | "allow" if ca.is_none() => PgTls::Off,
            "prefer" | "allow" | "require" | "verify-ca" | "verify-full" => PgTls::On { ca },
            other => {
                return Err(bad(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        };
        // The driver knows the scheme in lower case only.
        let base = match base.split_once("://") {
            Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
            None => base.to_string(),
        };
        let url = if kept.is_empty() {
            base
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| bad(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(bad("names no host".into()));
        }
        if config.get_password().is_none()
            && let Some(password) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty())
        {
            config.password(password.as_encoded_bytes());
        }
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".into());
            config.user(&user);
        }
        if config.get_dbname().is_none()
            && let Some(user) = config.get_user().map(str::to_string)
        {
            config.dbname(&user);
        }
        if config.get_application_name().is_none() {
            config.application_name("pytest-mcp");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        // The driver's own TLS switch: the connector below does the work.
        config.ssl_mode(match tls {
            PgTls::Off => tokio_postgres::config::SslMode::Disable,
            PgTls::On { .. } => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgUrl {
            config,
            tls,
            redacted,
        })
    }
}

/// Decodes `%XX` escapes (a path in a URL query).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn a_url_is_never_a_file_and_a_path_is_never_a_url() {
        for url in [
            "postgres://u@127.0.0.1:5432/db",
            "postgresql://u@localhost/db",
            "POSTGRES://u@h/db",
        ] {
            assert!(
                matches!(Location::parse(OsStr::new(url)), Ok(Location::Postgres(_))),
                "{url}"
            );
        }
        for path in ["results.db", "./postgres/x.db", "/tmp/postgres:/x.db"] {
            assert!(
                matches!(Location::parse(OsStr::new(path)), Ok(Location::Sqlite(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn passwords_never_reach_display_or_errors() {
        let url: PgUrl = "postgres://ci:s3cret@db.internal:5433/results?password=other"
            .parse()
            .expect("parses");
        let shown = format!("{url} {url:?} {:?}", Location::from(url.clone()));
        assert!(
            !shown.contains("s3cret") && !shown.contains("other"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://ci:***@db.internal:5433/results"),
            "{shown}"
        );
        assert_eq!(url.config.get_password(), Some(&b"other"[..]));

        let err = "postgres://ci:s3cret@h:notaport/db"
            .parse::<PgUrl>()
            .expect_err("bad port");
        let text = err.to_string();
        assert!(
            text.starts_with("--db: postgres://ci:***@h:notaport/db"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn tls_settings_are_read_from_the_url() {
        let on: PgUrl = "postgres://u@h/db?sslmode=require&sslrootcert=%2Ftmp%2Fca.pem"
            .parse()
            .expect("parses");
        assert_eq!(
            on.tls,
            PgTls::On {
                ca: Some(PathBuf::from("/tmp/ca.pem"))
            }
        );
        let off: PgUrl = "postgres://u@h/db?sslmode=disable".parse().expect("parses");
        assert_eq!(off.tls, PgTls::Off);
        let err = "postgres://u@h/db?sslmode=sometimes"
            .parse::<PgUrl>()
            .expect_err("bad mode");
        assert!(err.to_string().contains("sslmode=sometimes"), "{err}");
    }
}
