//! Quarantine: tests whose failures should not fail a run while they are
//! being fixed.
//!
//! An entry names a nodeid or an `fnmatch` pattern of nodeids, why, who
//! added it, and when it stops applying. The rules live here once, above
//! the backends (which only store and fetch entries): how long an entry
//! may last, what a pattern matches (Python's `fnmatch.fnmatchcase`, so the
//! plugin and the server agree), that an expired entry no longer applies,
//! and when an entry's tests have passed long enough to be released.
//!
//! Adding an entry that exists (same project and pattern) renews it: the new
//! reason, author and expiry replace the old.

use super::{SessionFilter, Store};
use crate::error::{Error, Result};
use crate::model::{
    MAX_NODEID_BYTES, Project, QuarantineEntry, SessionRef, Timestamp, validate_nodeid,
};

/// How long an entry lasts when no duration is given, in days.
pub const DEFAULT_DAYS: u32 = 14;

/// The longest an entry may last, in days: a quarantine is a fix in
/// progress, not a way to forget a test.
pub const MAX_DAYS: u32 = 90;

/// Passing runs in a row after which a quarantined test is suggested for release.
pub const RELEASE_AFTER: usize = 10;

/// Longest reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;

/// Most tests a pattern's status lists (and checks for release).
const MAX_PATTERN_TESTS: usize = 50;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A quarantine entry as asked for, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct NewQuarantine {
    /// A nodeid or an `fnmatch` pattern.
    pub pattern: String,
    /// The project it is for; empty for every project.
    pub project: String,
    /// Why.
    pub reason: String,
    /// Who asks.
    pub added_by: String,
    /// How many days it lasts; [`DEFAULT_DAYS`] when not given.
    pub days: Option<u32>,
}

impl NewQuarantine {
    /// Checks the request and makes the entry it asks for, added at `now`.
    /// Errors name the field: `nodeid`, `reason`, `days`, `project`.
    pub fn entry(self, now: Timestamp) -> Result<QuarantineEntry> {
        validate_nodeid(&self.pattern, "nodeid")?;
        if is_pattern(&self.pattern) {
            Pattern::new(&self.pattern)?;
        }
        let reason = self.reason.trim();
        if reason.is_empty() {
            return Err(Error::invalid(
                "reason",
                "must not be empty: say why the test is quarantined",
            ));
        }
        if reason.len() > MAX_REASON_BYTES {
            return Err(Error::invalid(
                "reason",
                format!("{} bytes, the limit is {MAX_REASON_BYTES}", reason.len()),
            ));
        }
        if self.project.len() > MAX_NODEID_BYTES {
            return Err(Error::invalid(
                "project",
                format!(
                    "{} bytes, the limit is {MAX_NODEID_BYTES}",
                    self.project.len()
                ),
            ));
        }
        let days = self.days.unwrap_or(DEFAULT_DAYS);
        if days == 0 || days > MAX_DAYS {
            return Err(Error::invalid(
                "days",
                format!("{days} is out of range: an entry lasts 1 to {MAX_DAYS} days"),
            ));
        }
        let added_by = match self.added_by.trim() {
            "" => "unknown".to_string(),
            by => by.chars().take(256).collect(),
        };
        Ok(QuarantineEntry {
            pattern: self.pattern,
            project: self.project,
            reason: reason.to_string(),
            added_by,
            added_at: now,
            expires_at: Timestamp(now.as_micros() + i64::from(days) * MICROS_PER_DAY),
        })
    }
}

/// Whether an entry still applies at `now`.
pub fn is_active(entry: &QuarantineEntry, now: Timestamp) -> bool {
    entry.expires_at > now
}

/// Whether an entry is for `project` (an entry without one is for all);
/// project names match case-insensitively.
pub fn is_for(entry: &QuarantineEntry, project: &str) -> bool {
    entry.project.is_empty() || entry.project.to_lowercase() == project.to_lowercase()
}

/// Whether `pattern` has `fnmatch` wildcards (else it is one nodeid).
pub fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Most characters the character classes of one pattern may hold together:
/// every class is tested against every character of a nodeid, so their size
/// is the pattern's cost per character.
pub const MAX_PATTERN_CLASS_CHARS: usize = 256;

/// Whether `nodeid` matches `pattern` as Python's `fnmatch.fnmatchcase`
/// decides: `*` is any run of characters (`/` and `::` included), `?` one
/// character, `[seq]` one of seq (ranges like `a-z`), `[!seq]` one not in
/// it; a `[` without its `]` is itself. Case matters. A pattern that is
/// not a valid [`Pattern`] matches nothing.
pub fn matches(pattern: &str, nodeid: &str) -> bool {
    Pattern::new(pattern).is_ok_and(|p| p.matches(nodeid))
}

/// One character of a pattern.
#[derive(Debug, Clone)]
enum Token {
    /// `?`: any one character.
    Any,
    /// A character that stands for itself.
    Char(char),
    /// `[seq]` / `[!seq]`: ranges (a single character is `c-c`).
    Class {
        /// `[!...]`.
        negate: bool,
        /// Inclusive ranges.
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether the token matches `c`, adding the work done to `steps`.
    fn matches(&self, c: char, steps: &mut u64) -> bool {
        match self {
            Token::Any => true,
            Token::Char(t) => *t == c,
            Token::Class { negate, ranges } => {
                *steps += ranges.len() as u64;
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate
            }
        }
    }
}

/// The tokens between two `*`, with what a Shift-And search needs: for each
/// literal character the bit set of positions it matches, and the positions
/// any character may take.
#[derive(Debug, Clone)]
struct Segment {
    tokens: Vec<Token>,
    /// Positions of `?`.
    any: Vec<u64>,
    /// Positions of each literal character.
    chars: std::collections::HashMap<char, Vec<u64>>,
    /// Positions and tokens of the classes.
    classes: Vec<usize>,
}

impl Segment {
    fn new(tokens: Vec<Token>) -> Self {
        let words = tokens.len().div_ceil(64).max(1);
        let mut any = vec![0; words];
        let mut chars: std::collections::HashMap<char, Vec<u64>> = Default::default();
        let mut classes = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let bit = (i / 64, 1u64 << (i % 64));
            match t {
                Token::Any => any[bit.0] |= bit.1,
                Token::Char(c) => chars.entry(*c).or_insert_with(|| vec![0; words])[bit.0] |= bit.1,
                Token::Class { .. } => classes.push(i),
            }
        }
        Segment {
            tokens,
            any,
            chars,
            classes,
        }
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the segment matches `text` exactly (same length).
    fn matches_at(&self, text: &[char], steps: &mut u64) -> bool {
        text.len() == self.len()
            && self.tokens.iter().zip(text).all(|(t, &c)| {
                *steps += 1;
                t.matches(c, steps)
            })
    }

    /// Where the leftmost occurrence of the segment in `text` ends (one past
    /// its last character): Shift-And, one pass over `text` whatever the
    /// segment holds, so a run of `[` cannot make it backtrack.
    fn find_end(&self, text: &[char], steps: &mut u64) -> Option<usize> {
        let n = self.len();
        if n == 0 {
            return Some(0);
        }
        let words = self.any.len();
        let top = ((n - 1) / 64, 1u64 << ((n - 1) % 64));
        let mut state = vec![0u64; words];
        let mut mask = vec![0u64; words];
        for (at, &c) in text.iter().enumerate() {
            *steps += 2 * words as u64 + 1;
            mask.copy_from_slice(&self.any);
            if let Some(bits) = self.chars.get(&c) {
                for (m, b) in mask.iter_mut().zip(bits) {
                    *m |= b;
                }
            }
            for &i in &self.classes {
                if self.tokens[i].matches(c, steps) {
                    mask[i / 64] |= 1 << (i % 64);
                }
            }
            // state = ((state << 1) | 1) & mask, across words.
            let mut carry = 1u64;
            for (s, m) in state.iter_mut().zip(&mask) {
                let next = *s >> 63;
                *s = ((*s << 1) | carry) & m;
                carry = next;
            }
            if state[top.0] & top.1 != 0 {
                return Some(at + 1);
            }
        }
        None
    }
}

/// A quarantine pattern compiled once: matching a nodeid is one pass over
/// it per `*`-separated part, never a backtracking search, so its cost is
/// linear in the nodeid (see [`Pattern::match_steps`]).
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The parts between `*` (one part when there is no `*`).
    segments: Vec<Segment>,
    /// Characters inside classes, in all.
    class_chars: usize,
}

impl Pattern {
    /// Compiles an `fnmatch` pattern. Errors name `nodeid`: a pattern is at
    /// most [`MAX_NODEID_BYTES`] long and its classes hold at most
    /// [`MAX_PATTERN_CLASS_CHARS`] characters.
    pub fn new(pattern: &str) -> Result<Self> {
        if pattern.len() > MAX_NODEID_BYTES {
            return Err(Error::invalid(
                "nodeid",
                format!("{} bytes, the limit is {MAX_NODEID_BYTES}", pattern.len()),
            ));
        }
        let p: Vec<char> = pattern.chars().collect();
        // Where the next `]` is from each index: whether a `[` opens a class
        // is then known at once, not by a scan to the end for each `[`.
        let mut next_close = vec![p.len(); p.len() + 1];
        for i in (0..p.len()).rev() {
            next_close[i] = if p[i] == ']' { i } else { next_close[i + 1] };
        }
        let mut segments = Vec::new();
        let mut tokens = Vec::new();
        let mut class_chars = 0;
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                '*' => {
                    segments.push(Segment::new(std::mem::take(&mut tokens)));
                    while p.get(i) == Some(&'*') {
                        i += 1;
                    }
                    continue;
                }
                '?' => tokens.push(Token::Any),
                '[' => match class(&p, i, &next_close) {
                    Some((end, token)) => {
                        class_chars += end - i;
                        tokens.push(token);
                        i = end;
                        continue;
                    }
                    None => tokens.push(Token::Char('[')),
                },
                c => tokens.push(Token::Char(c)),
            }
            i += 1;
        }
        segments.push(Segment::new(tokens));
        if class_chars > MAX_PATTERN_CLASS_CHARS {
            return Err(Error::invalid(
                "nodeid",
                format!(
                    "its [...] classes hold {class_chars} characters, the limit is {MAX_PATTERN_CLASS_CHARS}"
                ),
            ));
        }
        Ok(Pattern {
            segments,
            class_chars,
        })
    }

    /// Whether `nodeid` matches the pattern (see [`matches`]).
    pub fn matches(&self, nodeid: &str) -> bool {
        self.match_steps(nodeid).0
    }

    /// Whether `nodeid` is the pattern itself or matches it (see [`covers`]).
    pub fn covers(&self, pattern: &str, nodeid: &str) -> bool {
        pattern == nodeid || self.matches(nodeid)
    }

    /// The most work [`Pattern::match_steps`] does per character of a
    /// nodeid: bounded by the pattern's length and class limits.
    pub fn steps_per_char(&self) -> u64 {
        let words = self.segments.iter().map(|s| s.any.len()).max().unwrap_or(1);
        (2 * words + self.class_chars + 2) as u64
    }

    /// Whether `nodeid` matches, and the work it took (characters and bit
    /// words looked at): never more than [`Pattern::steps_per_char`] per
    /// character of `nodeid`, plus one.
    pub fn match_steps(&self, nodeid: &str) -> (bool, u64) {
        let mut steps = 1;
        let text: Vec<char> = nodeid.chars().collect();
        steps += text.len() as u64;
        let hit = self.run(&text, &mut steps);
        (hit, steps)
    }

    fn run(&self, text: &[char], steps: &mut u64) -> bool {
        let Some((first, rest)) = self.segments.split_first() else {
            return text.is_empty();
        };
        let Some((last, middle)) = rest.split_last() else {
            return first.matches_at(text, steps);
        };
        // `first*...*last`: the ends are anchored, and each middle part is
        // taken at its leftmost place, which leaves the most room for the
        // parts after it (so no other choice can succeed where it fails).
        if text.len() < first.len() + last.len()
            || !first.matches_at(&text[..first.len()], steps)
            || !last.matches_at(&text[text.len() - last.len()..], steps)
        {
            return false;
        }
        let mut at = first.len();
        let end = text.len() - last.len();
        for segment in middle {
            match segment.find_end(&text[at..end], steps) {
                Some(n) => at += n,
                None => return false,
            }
        }
        true
    }
}

/// The character class opening at `p[start]` (a `[`): the index after its
/// `]` and the class; `None` when it never closes (then `[` is itself).
fn class(p: &[char], start: usize, next_close: &[usize]) -> Option<(usize, Token)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    // The first character may be `]` itself; any later `]` closes the class
    // (a range's ends are never `]`).
    if next_close.get(i + 1).is_none_or(|&at| at >= p.len()) {
        return None;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let &here = p.get(i)?;
        if here == ']' && !first {
            return Some((i + 1, Token::Class { negate, ranges }));
        }
        first = false;
        match (p.get(i + 1), p.get(i + 2)) {
            (Some('-'), Some(&hi)) if hi != ']' => {
                ranges.push((here, hi));
                i += 3;
            }
            _ => {
                ranges.push((here, here));
                i += 1;
            }
        }
    }
}

/// Whether an entry's `pattern` names `nodeid`: the nodeid itself, or an
/// `fnmatch` pattern it matches. Equality comes first because a
/// parametrized nodeid (`test_p[1]`) read as a pattern would not match itself.
pub fn covers(pattern: &str, nodeid: &str) -> bool {
    pattern == nodeid || matches(pattern, nodeid)
}

/// For each pattern, the first [`MAX_PATTERN_TESTS`] of `nodeids` it
/// covers. Matching a session's every test against every pattern is CPU
/// work that grows with both, so it runs on a blocking thread, never on the
/// async runtime that answers other clients; each pattern is compiled once.
async fn pattern_tests(patterns: Vec<String>, nodeids: Vec<String>) -> Result<Vec<Vec<String>>> {
    tokio::task::spawn_blocking(move || {
        patterns
            .iter()
            .map(|pattern| {
                let Ok(compiled) = Pattern::new(pattern) else {
                    // Stored before patterns were bounded: only itself.
                    return nodeids.iter().filter(|n| *n == pattern).cloned().collect();
                };
                nodeids
                    .iter()
                    .filter(|n| compiled.covers(pattern, n))
                    .take(MAX_PATTERN_TESTS)
                    .cloned()
                    .collect()
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Internal(format!("matching quarantine patterns failed: {e}")))
}

/// Which of `nodeids` some of `patterns` covers ([`covers`]), in order;
/// on a blocking thread, each pattern compiled once.
pub async fn covered(patterns: Vec<String>, nodeids: Vec<String>) -> Result<Vec<bool>> {
    tokio::task::spawn_blocking(move || {
        let compiled: Vec<(Option<Pattern>, &String)> =
            patterns.iter().map(|p| (Pattern::new(p).ok(), p)).collect();
        nodeids
            .iter()
            .map(|n| {
                compiled.iter().any(|(c, p)| match c {
                    Some(c) => c.covers(p, n),
                    None => *p == n,
                })
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Internal(format!("matching quarantine patterns failed: {e}")))
}

/// `for every project` or `for project "shop"`.
fn scope_of(project: &str) -> String {
    if project.is_empty() {
        "for every project".to_string()
    } else {
        format!("for project {project:?}")
    }
}

/// What adding an entry did.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// The entry as stored.
    pub entry: QuarantineEntry,
    /// Whether it replaced one for the same project and pattern.
    pub renewed: bool,
}

/// How one quarantined test has done lately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedTest {
    /// The test.
    pub nodeid: String,
    /// Its newest pass/fail runs looked at (at most [`RELEASE_AFTER`]).
    pub runs: usize,
    /// How many of the newest of them passed in a row.
    pub passed_in_a_row: usize,
}

/// An active entry, its tests, and whether it can be released.
#[derive(Debug, Clone)]
pub struct QuarantineStatus {
    /// The entry.
    pub entry: QuarantineEntry,
    /// The tests it quarantines: its nodeid, or for a pattern the tests of
    /// the project's latest session that match it (at most 50).
    pub tests: Vec<QuarantinedTest>,
    /// Every one of its tests passed its last [`RELEASE_AFTER`] runs.
    pub release_suggested: bool,
}

impl Store {
    /// Quarantines a nodeid or pattern (or renews its entry).
    pub async fn quarantine(&self, new: NewQuarantine) -> Result<Quarantined> {
        let entry = new.entry(Timestamp::now())?;
        let renewed = self.backend().put_quarantine(entry.clone()).await?;
        Ok(Quarantined { entry, renewed })
    }

    /// Ends the quarantine of `pattern` in `project` ("" for the entry for
    /// every project) and returns the entry removed; NOT_FOUND names
    /// `nodeid` and says where entries for it exist.
    pub async fn release(&self, pattern: &str, project: &str) -> Result<QuarantineEntry> {
        validate_nodeid(pattern, "nodeid")?;
        if let Some(gone) = self
            .backend()
            .delete_quarantine(project.to_string(), pattern.to_string())
            .await?
        {
            return Ok(gone);
        }
        let elsewhere: Vec<String> = self
            .backend()
            .quarantine_entries(None)
            .await?
            .into_iter()
            .filter(|e| e.pattern == pattern)
            .map(|e| scope_of(&e.project))
            .collect();
        let hint = if elsewhere.is_empty() {
            String::new()
        } else {
            format!("; it is quarantined {}", elsewhere.join(", "))
        };
        let scope = scope_of(project);
        Err(Error::not_found(
            "nodeid",
            format!("{pattern:?} is not quarantined {scope}{hint}"),
        ))
    }

    /// The entries for `project` (every entry when `None`), active at
    /// `now` unless `with_expired`; exact nodeids first, then by pattern.
    pub async fn quarantine_list(
        &self,
        project: Option<&str>,
        with_expired: bool,
        now: Timestamp,
    ) -> Result<Vec<QuarantineEntry>> {
        // Every entry, filtered here: project names match case-insensitively,
        // and a database holds few entries.
        let mut entries = self.backend().quarantine_entries(None).await?;
        entries.retain(|e| {
            (with_expired || is_active(e, now)) && project.is_none_or(|p| is_for(e, p))
        });
        entries.sort_by(|a, b| {
            (is_pattern(&a.pattern), &a.pattern, &a.project).cmp(&(
                is_pattern(&b.pattern),
                &b.pattern,
                &b.project,
            ))
        });
        Ok(entries)
    }

    /// The active entries for `project` with how their tests did lately in
    /// its sessions, and whether each can be released.
    pub async fn quarantine_status(
        &self,
        project: &Project,
        now: Timestamp,
    ) -> Result<Vec<QuarantineStatus>> {
        let entries = self
            .quarantine_list(Some(&project.name), false, now)
            .await?;
        let patterns: Vec<String> = entries
            .iter()
            .filter(|e| is_pattern(&e.pattern))
            .map(|e| e.pattern.clone())
            .collect();
        let mut matched = if patterns.is_empty() {
            Vec::new()
        } else {
            let latest = self.latest_nodeids(project).await?;
            pattern_tests(patterns, latest).await?
        }
        .into_iter();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let nodeids = if is_pattern(&entry.pattern) {
                matched.next().unwrap_or_default()
            } else {
                vec![entry.pattern.clone()]
            };
            let mut tests = Vec::with_capacity(nodeids.len());
            for nodeid in nodeids {
                let runs = self
                    .backend()
                    .test_runs(nodeid.clone(), project.clone(), RELEASE_AFTER)
                    .await?;
                let passed_in_a_row = runs.iter().rev().take_while(|r| !r.failed).count();
                tests.push(QuarantinedTest {
                    nodeid,
                    runs: runs.len(),
                    passed_in_a_row,
                });
            }
            let release_suggested =
                !tests.is_empty() && tests.iter().all(|t| t.passed_in_a_row >= RELEASE_AFTER);
            out.push(QuarantineStatus {
                entry,
                tests,
                release_suggested,
            });
        }
        Ok(out)
    }

    /// The nodeids of the newest session of `project`.
    async fn latest_nodeids(&self, project: &Project) -> Result<Vec<String>> {
        let filter = SessionFilter {
            project: Some(project.clone()),
            ..SessionFilter::default()
        };
        let Some(latest) = self.list_sessions(filter, 1, None).await?.items.pop() else {
            return Ok(Vec::new());
        };
        let finals = self
            .backend()
            .session_finals(SessionRef::Id(latest.id))
            .await?;
        let keys = finals.finals.iter().map(|(k, _)| *k).collect();
        let names = self.backend().test_names(keys).await?;
        let mut nodeids: Vec<String> = names
            .into_values()
            .filter(|(_, subtest)| subtest.is_empty())
            .map(|(nodeid, _)| nodeid)
            .collect();
        nodeids.sort();
        nodeids.dedup();
        Ok(nodeids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_pythons_fnmatchcase_does() {
        // (pattern, nodeid, fnmatch.fnmatchcase's answer)
        let cases = [
            ("tests/test_a.py::test_x", "tests/test_a.py::test_x", true),
            ("tests/test_a.py::test_x", "tests/test_a.py::test_xy", false),
            ("tests/test_a.py::*", "tests/test_a.py::test_x", true),
            ("tests/*", "tests/sub/test_b.py::TestC::test_d", true),
            ("*::test_x", "tests/test_a.py::test_x", true),
            ("*::test_x", "tests/test_a.py::test_x2", false),
            ("*test_?", "tests/t.py::test_1", true),
            ("*test_?", "tests/t.py::test_12", false),
            ("*[[]1[]]", "tests/t.py::test_p[1]", true),
            ("*[[]2[]]", "tests/t.py::test_p[1]", false),
            ("*[0-9]", "t.py::test_7", true),
            ("*[!0-9]", "t.py::test_7", false),
            ("*[!0-9]", "t.py::test_x", true),
            ("t.py::test_[", "t.py::test_[", true),
            ("[]]x", "]x", true),
            ("[!]]x", "ax", true),
            ("[!]]x", "]x", false),
            ("T.py::*", "t.py::test", false),
            ("*", "", true),
            ("", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("*é*", "t.py::test_é", true),
        ];
        for (pattern, nodeid, want) in cases {
            assert_eq!(matches(pattern, nodeid), want, "{pattern:?} vs {nodeid:?}");
        }
    }

    fn new(pattern: &str, days: Option<u32>) -> NewQuarantine {
        NewQuarantine {
            pattern: pattern.into(),
            reason: "flaky on CI".into(),
            added_by: "alice".into(),
            days,
            ..NewQuarantine::default()
        }
    }

    #[test]
    fn an_entry_lasts_fourteen_days_unless_told_and_never_past_ninety() {
        let now = Timestamp(1_000_000);
        let e = new("t.py::test", None).entry(now).unwrap();
        assert_eq!(
            e.expires_at.as_micros() - now.as_micros(),
            14 * MICROS_PER_DAY
        );
        let e = new("t.py::test", Some(90)).entry(now).unwrap();
        assert_eq!(
            e.expires_at.as_micros() - now.as_micros(),
            90 * MICROS_PER_DAY
        );
        for days in [0, 91] {
            let err = new("t.py::test", Some(days)).entry(now).unwrap_err();
            assert!(err.to_string().starts_with("days:"), "{err}");
        }
        let mut no_reason = new("t.py::test", None);
        no_reason.reason = "  ".into();
        assert!(
            no_reason
                .entry(now)
                .unwrap_err()
                .to_string()
                .starts_with("reason:")
        );
        assert!(
            new("", None)
                .entry(now)
                .unwrap_err()
                .to_string()
                .starts_with("nodeid:")
        );
    }

    /// The entry that quarantines `nodeid` of `project` at `now`, as the
    /// plugin picks it: an exact nodeid before a pattern.
    fn entry_for<'e>(
        entries: &'e [QuarantineEntry],
        project: &str,
        nodeid: &str,
        now: Timestamp,
    ) -> Option<&'e QuarantineEntry> {
        let live = || {
            entries
                .iter()
                .filter(move |e| is_active(e, now) && is_for(e, project))
        };
        live()
            .find(|e| e.pattern == nodeid)
            .or_else(|| live().find(|e| covers(&e.pattern, nodeid)))
    }

    #[test]
    fn an_expired_entry_or_another_projects_entry_does_not_apply() {
        let now = Timestamp(10 * MICROS_PER_DAY);
        let mut exact = new("t.py::test_a", Some(1)).entry(Timestamp(0)).unwrap();
        exact.project = "shop".into();
        let pattern = new("t.py::*", Some(30)).entry(Timestamp(0)).unwrap();
        let entries = vec![pattern.clone(), exact.clone()];
        // The exact entry has expired (1 day from 0); the pattern still applies.
        assert_eq!(
            entry_for(&entries, "shop", "t.py::test_a", now),
            Some(&pattern)
        );
        let earlier = Timestamp(MICROS_PER_DAY / 2);
        assert_eq!(
            entry_for(&entries, "shop", "t.py::test_a", earlier),
            Some(&exact)
        );
        // Another project sees only the entry for every project.
        assert_eq!(
            entry_for(&entries, "blog", "t.py::test_a", earlier),
            Some(&pattern)
        );
        assert_eq!(entry_for(&entries, "shop", "u.py::test_a", earlier), None);
    }
}
