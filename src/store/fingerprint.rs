//! Failure fingerprints: what makes two failures "the same cause".
//!
//! A fingerprint is three parts of a failing outcome, each made stable
//! across runs:
//! - the exception type (`ConnectionRefusedError`), from pytest's last
//!   traceback line (`path:line: Type`) or else the message's prefix;
//! - the innermost frame in the project's own code, as file and function
//!   (no line number: an edit above it must not split a cluster), ignoring
//!   frames in installed packages and the standard library;
//! - the message, normalised: numbers, hex addresses, UUIDs, temporary
//!   paths, quoted values and pytest parameter ids replaced by placeholders,
//!   only its first line kept.
//!
//! Pure functions, no storage: the same input gives the same fingerprint in
//! every process and release, and [`Fingerprint::key`] is a stable hash of it.
//! Each failure's key is computed once, when it is stored ([`StoredCause`]),
//! so that counting a session's clusters reads keys, not tracebacks.

use std::fmt::Write as _;

use crate::model::Outcome;

/// The cause of a failure, in a form that is the same across runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// The exception type, or empty when none could be read.
    pub exception: String,
    /// The innermost frame in the project's code, as `file::function`, or
    /// empty when the traceback shows none.
    pub frame: String,
    /// The message, normalised.
    pub message: String,
}

impl Fingerprint {
    /// The fingerprint of a failing outcome.
    /// Reads the first [`MAX_MESSAGE_BYTES`] of the message and the last
    /// [`MAX_TRACEBACK_BYTES`] of the traceback, each in one pass or a few.
    pub fn of(o: &Outcome) -> Self {
        let (message, longrepr) = (
            head(&o.message, MAX_MESSAGE_BYTES),
            tail(&o.longrepr, MAX_TRACEBACK_BYTES),
        );
        let exception = exception_type(longrepr, message);
        let frame = innermost_frame(longrepr, &o.nodeid);
        let message = normalise(strip_exception(first_line(message), &exception));
        Fingerprint {
            exception,
            frame,
            message,
        }
    }

    /// A stable 64-bit hash of the three parts, as 16 hex digits (FNV-1a:
    /// the same in every build, unlike the standard library's hasher).
    pub fn key(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [&self.exception, &self.frame, &self.message] {
            for b in part.bytes().chain([0xff]) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    /// The fingerprint in words: `ConnectionRefusedError in tests/conftest.py::db: <message>`.
    pub fn describe(&self) -> String {
        let mut out = if self.exception.is_empty() {
            "a failure".to_string()
        } else {
            self.exception.clone()
        };
        if !self.frame.is_empty() {
            let _ = write!(out, " in {}", self.frame);
        }
        if !self.message.is_empty() {
            let _ = write!(out, ": {}", self.message);
        }
        out
    }
}

/// A failure's cause as it is stored beside the failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCause {
    /// The fingerprint's key.
    pub key: String,
    /// The fingerprint in words.
    pub cause: String,
}

impl StoredCause {
    /// The cause of a failing or erroring outcome (with its full text);
    /// `None` for any other outcome.
    pub fn of(o: &Outcome) -> Option<Self> {
        o.outcome.is_failure().then(|| {
            let f = Fingerprint::of(o);
            StoredCause {
                key: f.key(),
                cause: f.describe(),
            }
        })
    }
}

/// A stored failure, with the key of its cause when one was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedFailure {
    /// Its seq in the session.
    pub seq: u64,
    /// Its test.
    pub nodeid: String,
    /// Its cause's key ([`Fingerprint::key`]); `None` only for a failure
    /// stored without one, which the store fingerprints when it is read.
    pub key: Option<String>,
}

/// Failures of one session that share a cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Their cause's key ([`Fingerprint::key`]).
    pub key: String,
    /// Their seqs, in the order they failed.
    pub seqs: Vec<u64>,
    /// The tests affected, each once, in the order they failed.
    pub tests: Vec<String>,
}

impl Cluster {
    /// The seq of its first failure: the one shown for all of them.
    pub fn first(&self) -> u64 {
        self.seqs[0]
    }

    /// How many failing outcomes.
    pub fn failures(&self) -> u64 {
        self.seqs.len() as u64
    }
}

/// Groups keyed failures by cause: the largest cluster first, and among
/// equals the one that failed first. A failure without a key is left out.
pub fn clusters(failures: &[KeyedFailure]) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = Vec::new();
    let mut by_key: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for f in failures {
        let Some(key) = f.key.as_deref() else {
            continue;
        };
        let at = *by_key.entry(key).or_insert_with(|| {
            out.push(Cluster {
                key: key.to_string(),
                seqs: Vec::new(),
                tests: Vec::new(),
            });
            out.len() - 1
        });
        let c = &mut out[at];
        c.seqs.push(f.seq);
        if !c.tests.contains(&f.nodeid) {
            c.tests.push(f.nodeid.clone());
        }
    }
    out.sort_by(|a, b| {
        b.seqs
            .len()
            .cmp(&a.seqs.len())
            .then(a.first().cmp(&b.first()))
    });
    out
}

/// The clusters of `head` whose cause `base` did not fail of (new), and
/// those of `base` whose cause `head` no longer fails of (fixed).
pub fn changed_causes(base: &[Cluster], head: &[Cluster]) -> (Vec<Cluster>, Vec<Cluster>) {
    let keys = |cs: &[Cluster]| -> std::collections::HashSet<String> {
        cs.iter().map(|c| c.key.clone()).collect()
    };
    let (in_base, in_head) = (keys(base), keys(head));
    let new = head
        .iter()
        .filter(|c| !in_base.contains(&c.key))
        .cloned()
        .collect();
    let fixed = base
        .iter()
        .filter(|c| !in_head.contains(&c.key))
        .cloned()
        .collect();
    (new, fixed)
}

fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// Whether `s` looks like a Python exception name (`KeyError`, `requests.exceptions.Timeout`).
fn is_exception_name(s: &str) -> bool {
    let last = s.rsplit('.').next().unwrap_or_default();
    !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !part.starts_with(|c: char| c.is_ascii_digit())
        })
        && last.starts_with(|c: char| c.is_ascii_uppercase())
}

fn exception_type(longrepr: &str, message: &str) -> String {
    // pytest's long traceback ends with `path:line: Type`.
    for line in longrepr.lines().rev() {
        let line = line.trim();
        if let Some((_, tail)) = split_location(line)
            && is_exception_name(tail)
        {
            return tail.to_string();
        }
        if let Some(rest) = line.strip_prefix("E ")
            && let Some((name, _)) = rest.trim().split_once(':')
            && is_exception_name(name)
        {
            return name.to_string();
        }
    }
    match first_line(message).split_once(':') {
        Some((name, _)) if is_exception_name(name.trim()) => name.trim().to_string(),
        _ if is_exception_name(first_line(message)) => first_line(message).to_string(),
        _ => String::new(),
    }
}

/// Splits pytest's `path:line: rest` location line.
fn split_location(line: &str) -> Option<(&str, &str)> {
    let (path_line, rest) = line.split_once(": ")?;
    let (path, number) = path_line.rsplit_once(':')?;
    (!path.is_empty() && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
        .then_some((path, rest.trim()))
}

/// Whether a traceback path is the project's own code (relative, not an
/// installed package or the interpreter's library).
fn is_project_path(path: &str) -> bool {
    !(path.starts_with('/')
        || path.starts_with('<')
        || path.contains(":\\")
        || path.contains("site-packages")
        || path.contains("dist-packages")
        || path.contains("/lib/python"))
}

fn innermost_frame(longrepr: &str, nodeid: &str) -> String {
    // Read from the end: the innermost frame is the last location line in
    // the project's code, and the source pytest printed for it is above it.
    let mut lines = longrepr.lines().rev();
    let found = lines.by_ref().find_map(|line| {
        let (path, rest) = split_location(line.trim())?;
        is_project_path(path).then_some((path, rest))
    });
    let Some((path, rest)) = found else {
        // No traceback: the test itself, without its parameters.
        let base = nodeid.split('[').next().unwrap_or(nodeid);
        return if longrepr.trim().is_empty() {
            base.to_string()
        } else {
            String::new()
        };
    };
    let function = match rest.strip_prefix("in ") {
        Some(f) => f.trim().to_string(),
        // The last frame names the exception, not the function: take the
        // nearest `def name(` above it, as pytest prints the source, or
        // else, in the test's own file, the test.
        None => lines
            .find_map(|l| {
                let l = l.trim_start_matches(['>', ' ']);
                let l = l.strip_prefix("async ").unwrap_or(l);
                l.strip_prefix("def ")?
                    .split('(')
                    .next()
                    .map(str::to_string)
            })
            .or_else(|| test_function(nodeid, path))
            .unwrap_or_default(),
    };
    if function.is_empty() {
        path.to_string()
    } else {
        format!("{path}::{function}")
    }
}

/// The test's function (no class, no parameters) when `path` is its file.
fn test_function(nodeid: &str, path: &str) -> Option<String> {
    let (file, rest) = nodeid.split_once("::")?;
    (file == path).then_some(())?;
    let last = rest.rsplit("::").next().unwrap_or(rest);
    Some(last.split('[').next().unwrap_or(last).to_string())
}

fn strip_exception<'a>(message: &'a str, exception: &str) -> &'a str {
    if exception.is_empty() {
        return message;
    }
    message
        .strip_prefix(exception)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or(message)
}

/// Most bytes of a message that are normalised (the rest is dropped): a
/// fingerprint needs the start of the first line, and a peer may send a
/// message of megabytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Most bytes of a traceback's end that are read for the exception and the
/// innermost frame (pytest prints both last).
pub const MAX_TRACEBACK_BYTES: usize = 64 * 1024;

/// Most bytes [`normalise`] returns: each placeholder is at most 4.5 times
/// the text it replaces (`''` becomes `'<value>'`).
pub const MAX_NORMALISED_BYTES: usize = MAX_MESSAGE_BYTES * 9 / 2;

/// The most work [`normalise_steps`] counts per character.
pub const NORMALISE_STEPS_PER_CHAR: u64 = 128;

/// The first `max` bytes of `text`, cut at a character boundary.
fn head(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Replaces what changes from run to run by placeholders, in the first
/// [`MAX_MESSAGE_BYTES`] of `message`.
pub fn normalise(message: &str) -> String {
    normalise_steps(message).0
}

/// [`normalise`], and the work it took: characters looked at, each a
/// bounded number of times, so it is linear in the message: at most
/// [`NORMALISE_STEPS_PER_CHAR`] per character normalised, and one.
pub fn normalise_steps(message: &str) -> (String, u64) {
    let chars: Vec<char> = head(message, MAX_MESSAGE_BYTES).chars().collect();
    let len = chars.len();
    let mut steps = len as u64;
    // Where the next `'`, `"`, `]` and `\temp\` are from each index: a
    // quote or `[` then finds its end at once instead of scanning the rest
    // of the message, which made a message of `[`s quadratic.
    let next_of = |hit: &dyn Fn(usize) -> bool| {
        let mut next = vec![len; len + 1];
        for i in (0..len).rev() {
            next[i] = if hit(i) { i } else { next[i + 1] };
        }
        next
    };
    let next_single = next_of(&|i| chars[i] == '\'');
    let next_double = next_of(&|i| chars[i] == '"');
    let next_close = next_of(&|i| chars[i] == ']');
    let next_temp = next_of(&|i| {
        chars.get(i..i + 6).is_some_and(|w| {
            w.iter()
                .map(char::to_ascii_lowercase)
                .eq("\\temp\\".chars())
        })
    });
    steps += 10 * len as u64;
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_BYTES));
    let mut i = 0;
    while i < len {
        let c = chars[i];
        let rest = &chars[i..];
        // uuid_len looks at 37 characters at most, the temporary path roots
        // at 48 together.
        steps += 96;
        if let Some(n) = uuid_len(rest) {
            out.push_str("<uuid>");
            i += n;
        } else if c == '0'
            && matches!(rest.get(1), Some('x' | 'X'))
            && let n @ 1.. = hex_run(&rest[2..])
        {
            out.push_str("<addr>");
            steps += n as u64;
            i += 2 + n;
        } else if let Some(n) =
            temp_path_len(rest, next_temp[i] < len && next_temp[i] + 6 <= i + 200)
        {
            out.push_str("<path>");
            steps += n as u64;
            i += n;
        } else if (c == '\'' || c == '"')
            && let end = if c == '"' {
                next_double[i + 1]
            } else {
                next_single[i + 1]
            }
            && end < len
        {
            out.push(c);
            out.push_str("<value>");
            out.push(c);
            i = end + 1;
        } else if c == '[' && next_close[i + 1] < len {
            out.push_str("[<param>]");
            i = next_close[i + 1] + 1;
        } else if c.is_ascii_digit() && !prev_is_word(&chars, i) {
            let mut n = 0;
            while rest.get(n).is_some_and(|d| d.is_ascii_digit() || *d == '.') {
                n += 1;
            }
            steps += n as u64;
            out.push_str("<n>");
            i += n;
        } else {
            out.push(c);
            i += 1;
        }
    }
    steps += out.len() as u64;
    (out.split_whitespace().collect::<Vec<_>>().join(" "), steps)
}

fn prev_is_word(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_ascii_alphabetic() || chars[i - 1] == '_')
}

fn hex_run(chars: &[char]) -> usize {
    chars.iter().take_while(|c| c.is_ascii_hexdigit()).count()
}

/// The length of a UUID at the start of `chars` (8-4-4-4-12 hex digits);
/// looks at 37 characters at most, however long a hex run follows.
fn uuid_len(chars: &[char]) -> Option<usize> {
    let groups = [8, 4, 4, 4, 12];
    let mut at = 0;
    for (g, len) in groups.iter().enumerate() {
        let group = chars.get(at..at + len)?;
        if !group.iter().all(char::is_ascii_hexdigit) {
            return None;
        }
        at += len;
        if g < 4 {
            if chars.get(at) != Some(&'-') {
                return None;
            }
            at += 1;
        }
    }
    (!chars.get(at).is_some_and(|c| c.is_ascii_hexdigit())).then_some(at)
}

/// The length of a temporary path at the start of `chars`, up to the next
/// space or quote; `temp_near` says whether `\temp\` starts within its
/// first 200 characters (a Windows temporary directory).
fn temp_path_len(chars: &[char], temp_near: bool) -> Option<usize> {
    const ROOTS: &[&str] = &[
        "/tmp/",
        "/var/folders/",
        "/private/var/folders/",
        "/var/tmp/",
    ];
    // Called at every position of a message: decide without allocating
    // unless the text starts like a path.
    let starts_with = |prefix: &str| {
        let mut at = chars.iter();
        prefix.chars().all(|p| at.next() == Some(&p))
    };
    let unix_temp = chars.first() == Some(&'/') && ROOTS.iter().any(|r| starts_with(r));
    let windows_temp =
        !unix_temp && chars.len() > 3 && chars[1] == ':' && chars[2] == '\\' && temp_near;
    if !unix_temp && !windows_temp {
        return None;
    }
    Some(
        chars
            .iter()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '\'' | '"' | ',' | ')'))
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TestOutcome;

    fn outcome(nodeid: &str, message: &str, longrepr: &str) -> Outcome {
        Outcome {
            message: message.into(),
            longrepr: longrepr.into(),
            ..Outcome::new(1, nodeid, TestOutcome::Failed)
        }
    }

    #[test]
    fn messages_are_normalised_to_what_stays_the_same_across_runs() {
        let cases = [
            ("assert 3 == 2", "assert <n> == <n>"),
            ("took 12.5s, limit 10", "took <n>s, limit <n>"),
            ("port 5433 refused", "port <n> refused"),
            (
                "object at 0x7f3a2b1c9d40 is gone",
                "object at <addr> is gone",
            ),
            (
                "no row 5f4a9c77-1b2c-4d3e-8f90-0a1b2c3d4e5f in users",
                "no row <uuid> in users",
            ),
            (
                "cannot open /tmp/pytest-of-ci/pytest-42/test_db0/data.db",
                "cannot open <path>",
            ),
            (
                "missing /var/folders/x1/abc/T/tmpq9z/out.json, retry",
                "missing <path>, retry",
            ),
            (
                r"missing C:\Users\ci\AppData\Local\Temp\tmp1\f.txt",
                "missing <path>",
            ),
            ("KeyError 'user_42'", "KeyError '<value>'"),
            (
                r#"expected "abc" got "abd""#,
                r#"expected "<value>" got "<value>""#,
            ),
            ("test_add[3-4-7] failed", "test_add[<param>] failed"),
            ("  spaced   out\ttext ", "spaced out text"),
            ("http2 and utf8 stay", "http2 and utf8 stay"),
            ("", ""),
        ];
        for (given, want) in cases {
            assert_eq!(normalise(given), want, "{given:?}");
        }
    }

    #[test]
    fn failures_of_one_broken_fixture_share_a_fingerprint_whatever_the_port_and_path() {
        let longrepr = |port: u16, tmp: &str| {
            format!(
                "    @pytest.fixture\n    def db(tmp_path):\n>       return connect(port={port}, dir=tmp_path)\n\n\
                 tests/conftest.py:14: in db\n    return connect(port={port}, dir=tmp_path)\n\
                 /usr/lib/python3.12/socket.py:852: in create_connection\n    raise err\n\
                 E   ConnectionRefusedError: [Errno 111] Connection refused: 127.0.0.1:{port} ({tmp})\n\n\
                 /usr/lib/python3.12/socket.py:838: ConnectionRefusedError"
            )
        };
        let a = outcome(
            "tests/test_a.py::test_one",
            "ConnectionRefusedError: [Errno 111] Connection refused: 127.0.0.1:5433 (/tmp/pytest-1/a0)",
            &longrepr(5433, "/tmp/pytest-1/a0"),
        );
        let b = outcome(
            "tests/test_b.py::test_two[x-1]",
            "ConnectionRefusedError: [Errno 111] Connection refused: 127.0.0.1:6012 (/tmp/pytest-9/b3)",
            &longrepr(6012, "/tmp/pytest-9/b3"),
        );
        let (fa, fb) = (Fingerprint::of(&a), Fingerprint::of(&b));
        assert_eq!(fa, fb);
        assert_eq!(fa.key(), fb.key());
        assert_eq!(fa.exception, "ConnectionRefusedError");
        assert_eq!(fa.frame, "tests/conftest.py::db");
        assert_eq!(
            fa.describe(),
            "ConnectionRefusedError in tests/conftest.py::db: [<param>] Connection refused: <n>:<n> (<path>)"
        );
    }

    #[test]
    fn the_innermost_project_frame_and_the_exception_come_from_the_traceback() {
        let longrepr = "def test_total():\n        cart = make_cart()\n>       assert total(cart) == 10\n\n\
                        tests/test_cart.py:9: \n_ _ _\n\n    def total(cart):\n>       return sum(i.price for i in cart)\n\
                        E       TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'\n\n\
                        src/shop/cart.py:31: TypeError";
        let o = outcome(
            "tests/test_cart.py::test_total",
            "TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'",
            longrepr,
        );
        let f = Fingerprint::of(&o);
        assert_eq!(f.exception, "TypeError");
        assert_eq!(f.frame, "src/shop/cart.py::total");
        assert_eq!(
            f.message,
            "unsupported operand type(s) for +: '<value>' and '<value>'"
        );
    }

    #[test]
    fn a_frame_without_its_source_falls_back_to_the_test_or_the_file() {
        let tail = "\n    value = client.fetch(order_id=7)\n\nsrc/shop/client.py:40: in fetch\n\
                    E   AssertionError: assert 3 == 2\n\ntests/test_shop.py:12: AssertionError";
        let o = outcome(
            "tests/test_shop.py::TestShop::test_order[sqlite-3]",
            "AssertionError: assert 3 == 2",
            tail,
        );
        assert_eq!(Fingerprint::of(&o).frame, "tests/test_shop.py::test_order");
        let elsewhere = "E   AssertionError: boom\n\nsrc/shop/client.py:40: AssertionError";
        let o = outcome(
            "tests/test_shop.py::test_x",
            "AssertionError: boom",
            elsewhere,
        );
        assert_eq!(Fingerprint::of(&o).frame, "src/shop/client.py");
    }

    #[test]
    fn different_causes_get_different_fingerprints() {
        let assertion = outcome(
            "t.py::test_a",
            "AssertionError: assert 1 == 2",
            "def test_a():\n>       assert 1 == 2\nE       assert 1 == 2\n\nt.py:2: AssertionError",
        );
        let key_error = outcome(
            "t.py::test_a",
            "KeyError: 'x'",
            "def test_a():\n>       d['x']\nE       KeyError: 'x'\n\nt.py:2: KeyError",
        );
        let elsewhere = outcome(
            "t.py::test_b",
            "AssertionError: assert 1 == 2",
            "def test_b():\n>       assert 1 == 2\nE       assert 1 == 2\n\nt.py:5: AssertionError",
        );
        let keys = [&assertion, &key_error, &elsewhere].map(|o| Fingerprint::of(o).key());
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[0], keys[2]);
        assert_eq!(Fingerprint::of(&assertion).frame, "t.py::test_a");
    }

    #[test]
    fn a_failure_without_a_traceback_is_keyed_by_its_test_and_message() {
        let o = outcome("t.py::test_x[3]", "Failed: timeout after 30s", "");
        let f = Fingerprint::of(&o);
        assert_eq!(f.exception, "Failed");
        assert_eq!(f.frame, "t.py::test_x");
        assert_eq!(f.message, "timeout after <n>s");
        let multi = outcome(
            "t.py::test_y",
            "\n  ValueError: bad value 7\n  second line 8\n",
            "",
        );
        let f = Fingerprint::of(&multi);
        assert_eq!(f.exception, "ValueError");
        assert_eq!(f.message, "bad value <n>");
        let bare = outcome("t.py::test_z", "something odd", "");
        assert_eq!(Fingerprint::of(&bare).exception, "");
        assert_eq!(
            Fingerprint::of(&bare).describe(),
            "a failure in t.py::test_z: something odd"
        );
    }

    #[test]
    fn clusters_count_stored_keys_largest_first_and_changed_causes_compare_keys() {
        let f = |seq: u64, nodeid: &str, key: Option<&str>| KeyedFailure {
            seq,
            nodeid: nodeid.into(),
            key: key.map(str::to_string),
        };
        let head = clusters(&[
            f(1, "t.py::a", Some("k1")),
            f(2, "t.py::b", Some("k2")),
            f(3, "t.py::b", Some("k2")),
            f(4, "t.py::c", Some("k2")),
            f(5, "t.py::d", None),
            f(6, "t.py::e", Some("k3")),
        ]);
        let summary: Vec<(&str, Vec<u64>, usize)> = head
            .iter()
            .map(|c| (c.key.as_str(), c.seqs.clone(), c.tests.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("k2", vec![2, 3, 4], 2),
                ("k1", vec![1], 1),
                ("k3", vec![6], 1)
            ]
        );
        let base = clusters(&[f(9, "t.py::a", Some("k1")), f(10, "t.py::z", Some("k9"))]);
        let (new, fixed) = changed_causes(&base, &head);
        let keys = |cs: &[Cluster]| cs.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&new), ["k2", "k3"]);
        assert_eq!(keys(&fixed), ["k9"]);
    }
}
