//! Properties that hold for any input, checked with proptest against the
//! library: the spool importer never panics and names the file and line of
//! every problem; validation never panics, names the field at fault, and
//! bounds what it keeps; the protobuf conversion names its fields too; the
//! normaliser and the quarantine matcher do work linear in their input. The
//! importer's properties run on every backend (fewer cases on PostgreSQL).
//!
//! On a failure proptest prints the smallest input it found and records it
//! under `proptest-regressions/`, so the next run tries it first.

#![allow(clippy::unwrap_used)]

mod support;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;

use pytest_mcp::error::Error;
use pytest_mcp::grpc::convert::{outcome_from_pb, outcome_to_pb};
use pytest_mcp::grpc::pb;
use pytest_mcp::model::{
    MAX_NODEID_BYTES, MAX_PROPERTIES, MAX_PROPERTY_NAME_BYTES, MAX_PROPERTY_VALUE_BYTES, Outcome,
    PROPERTIES_TRUNCATED, SessionRef, TRUNCATION_MARKER, TestOutcome,
};
use pytest_mcp::spool::{ImportReport, import_file};
use pytest_mcp::store::fingerprint;
use pytest_mcp::store::location::Location;
use pytest_mcp::store::quarantine::{self, Pattern};
use pytest_mcp::store::{OutcomeFilter, SessionFilter, Store, StoreConfig};
use support::{Backend, TestDb};

// ---------------------------------------------------------------------------
// (a) The spool importer.

const IDS: [&str; 2] = [
    "5f0c2a52-3c1e-4d0e-9a57-8a1f0b7f3c01",
    "9b4f7f3e-1d2c-4b5a-8e6f-0a1b2c3d4e5f",
];

/// One line of a generated spool file.
#[derive(Debug, Clone)]
enum Line {
    /// A record the importer understands, though its values may be wrong.
    Record(serde_json::Value),
    /// A record cut short, as a crash while writing leaves it.
    Cut(serde_json::Value, usize),
    /// Text that is not a record at all.
    Junk(String),
    /// Whitespace only.
    Blank(String),
}

impl Line {
    fn text(&self) -> String {
        match self {
            Line::Record(v) => v.to_string(),
            Line::Cut(v, at) => {
                let text = v.to_string();
                let mut end = (*at).min(text.len().saturating_sub(1));
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text[..end].to_string()
            }
            Line::Junk(t) | Line::Blank(t) => t.clone(),
        }
    }
}

fn session_id() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => select(IDS.to_vec()).prop_map(String::from),
        1 => Just("not-a-uuid".to_string()),
        1 => Just(String::new()),
    ]
}

fn time_text() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!("2026-11-24T09:00:00Z")),
        Just(json!("2026-11-24T09:00:00.123456+02:00")),
        Just(json!("yesterday")),
        Just(json!(12)),
    ]
}

fn nodeid() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec!["tests/test_a.py::test_one", "tests/test_a.py::test_ü[😀-1]", "t.py::T::m"])
            .prop_map(String::from),
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
        1 => Just("x".repeat(MAX_NODEID_BYTES + 1)),
        1 => "[^\n]{1,40}",
    ]
}

fn outcome_record() -> impl Strategy<Value = serde_json::Value> {
    (
        session_id(),
        prop_oneof![10 => 1u64..=10, 1 => Just(0u64), 1 => Just(u64::MAX)],
        nodeid(),
        select(vec![
            "passed", "failed", "skipped", "error", "xfailed", "xpassed", "bogus",
        ]),
        select(vec![0.0, 0.25, -1.0, 1e300]),
        any::<String>(),
        vec(any::<String>(), 0..3),
        vec((any::<String>(), any::<String>()), 0..3),
        select(vec!["", "(i=1)"]),
        time_text(),
        option::of(select(vec!["setup", "call", "teardown", "lunch"])),
    )
        .prop_map(
            |(id, seq, nodeid, kind, duration, longrepr, markers, props, subtest, at, phase)| {
                json!({
                    "type": "outcome", "session_id": id, "seq": seq, "nodeid": nodeid,
                    "outcome": kind, "duration": duration, "longrepr": longrepr,
                    "message": "m", "markers": markers, "user_properties": props,
                    "subtest": subtest, "started_at": at, "phase": phase,
                })
            },
        )
}

fn record() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        2 => (session_id(), time_text(), "[a-zé]{0,8}").prop_map(|(id, at, project)| json!({
            "type": "start", "session_id": id, "started_at": at,
            "environment": {"project": project, "os": "Linux"},
        })),
        8 => outcome_record(),
        1 => (session_id(), 0u64..=12, select(vec![0, 1, 2]), select(vec![1.0, -1.0]), time_text())
            .prop_map(|(id, sent, exitstatus, duration, at)| json!({
                "type": "finish", "session_id": id, "outcomes_sent": sent, "finished_at": at,
                "summary": {"total_tests": sent, "exitstatus": exitstatus, "duration": duration},
            })),
        1 => select(vec![
            json!({"type": "nope"}),
            json!({"type": "outcome"}),
            json!([]),
            json!(1),
            json!("start"),
        ]),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        12 => record().prop_map(Line::Record),
        2 => (record(), 0usize..200).prop_map(|(r, at)| Line::Cut(r, at)),
        2 => "[^\n]{0,60}".prop_map(Line::Junk),
        1 => "[ \t\r]{0,3}".prop_map(Line::Blank),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether `error` names `file` and a line in 1..=lines, or is one of the
/// end-of-file summaries naming the file and a session.
fn names_file_and_line(error: &str, file: &str, lines: usize) -> bool {
    let Some(rest) = error.strip_prefix(file) else {
        return false;
    };
    if let Some(rest) = rest.strip_prefix(": session ") {
        return rest
            .split_once(": ")
            .is_some_and(|(id, _)| uuid::Uuid::parse_str(id).is_ok());
    }
    rest.strip_prefix(':')
        .and_then(|r| r.split_once(": "))
        .and_then(|(n, _)| n.parse::<usize>().ok())
        .is_some_and(|n| (1..=lines).contains(&n))
}

/// The store on `db`, opened afresh.
async fn open(db: &TestDb) -> Result<Store, Error> {
    Store::open(StoreConfig::new(Location::parse(db.arg())?)).await
}

/// The store reopens, lists its sessions, and each session's outcomes are
/// seqs 1..=outcomes_stored.
async fn still_reads(db: &TestDb) -> Result<(), TestCaseError> {
    let store = open(db)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let sessions = store
        .list_sessions(SessionFilter::default(), 100, None)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for s in &sessions.items {
        let (_, page) = store
            .list_outcomes(SessionRef::Id(s.id), OutcomeFilter::default(), 1000, None)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let seqs: Vec<u64> = page.items.iter().map(|o| o.seq).collect();
        prop_assert_eq!(seqs, (1..=s.outcomes_stored).collect::<Vec<_>>());
    }
    store.shutdown().await;
    Ok(())
}

async fn import(db: &TestDb, file: &std::path::Path) -> Result<ImportReport, Error> {
    let store = open(db).await.unwrap();
    let report = import_file(&store, file).await;
    store.shutdown().await;
    report
}

/// Any bytes, and bytes that are mostly text, so more of them get past the line reader.
fn spool_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2000),
        vec(
            prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\n'), 1 => any::<u8>()],
            0..2000
        ),
    ]
}

/// `bytes` as a spool file are refused line by line, without a panic.
fn check_any_bytes(db: &TestDb, bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.jsonl");
    std::fs::write(&file, bytes).unwrap();
    let name = file.display().to_string();
    let lines = bytes.split(|b| *b == b'\n').count();
    runtime().block_on(async {
        match import(db, &file).await {
            Ok(report) => {
                for e in &report.errors {
                    prop_assert!(names_file_and_line(e, &name, lines), "{}", e);
                }
            }
            // Only an I/O error stops the import; it names the line.
            Err(e) => {
                let text = e.to_string();
                let rest = text.strip_prefix("FILE: ").unwrap_or_default();
                prop_assert!(names_file_and_line(rest, &name, lines), "{}", text);
                prop_assert!(rest.contains("cannot read"), "{}", text);
            }
        }
        still_reads(db).await
    })
}

/// A spool file of `lines` names every bad line and imports the rest, once.
fn check_mixed_lines(db: &TestDb, lines: &[Line]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.jsonl");
    let text: String = lines.iter().map(|l| l.text() + "\n").collect();
    std::fs::write(&file, &text).unwrap();
    let name = file.display().to_string();
    runtime().block_on(async {
        let first = import(db, &file)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for e in &first.errors {
            prop_assert!(names_file_and_line(e, &name, lines.len()), "{}", e);
        }
        // Every line that is not a record is named, by its number.
        for (i, l) in lines.iter().enumerate() {
            let unreadable = match l {
                Line::Junk(t) => !t.trim().is_empty(),
                Line::Cut(..) => !l.text().trim().is_empty(),
                Line::Record(_) | Line::Blank(_) => false,
            };
            if unreadable {
                let prefix = format!("{name}:{}: ", i + 1);
                prop_assert!(
                    first.errors.iter().any(|e| e.starts_with(&prefix)),
                    "line {} ({:?}) is not named in {:?}",
                    i + 1,
                    l.text(),
                    first.errors
                );
            }
        }
        still_reads(db).await?;

        // Importing the same file again stores nothing new.
        let again = import(db, &file)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for s in &again.sessions {
            prop_assert_eq!(s.outcomes_new, 0, "{:?}", s);
            let before = first.sessions.iter().find(|f| f.id == s.id);
            prop_assert_eq!(before.map(|f| f.outcomes_stored), Some(s.outcomes_stored));
        }
        still_reads(db).await
    })
}

/// `n` cases if this run includes `backend`, else none (see tests/support).
fn cases(backend: Backend, n: u32) -> u32 {
    if backend.runs() { n } else { 0 }
}

mod sqlite {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(Backend::Sqlite, 64), ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_as_a_spool_file_are_refused_line_by_line_without_a_panic(
            bytes in spool_bytes()
        ) {
            check_any_bytes(&TestDb::sqlite(), &bytes)?;
        }

        #[test]
        fn a_spool_file_mixing_records_and_junk_names_every_bad_line_and_imports_the_rest_once(
            lines in vec(line(), 0..40)
        ) {
            check_mixed_lines(&TestDb::sqlite(), &lines)?;
        }
    }
}

/// Fewer cases than on SQLite: each one creates a database.
mod postgres {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(Backend::Postgres, 16), ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_as_a_spool_file_are_refused_line_by_line_without_a_panic(
            bytes in spool_bytes()
        ) {
            check_any_bytes(&TestDb::postgres("any_bytes_as_a_spool_file"), &bytes)?;
        }

        #[test]
        fn a_spool_file_mixing_records_and_junk_names_every_bad_line_and_imports_the_rest_once(
            lines in vec(line(), 0..40)
        ) {
            check_mixed_lines(&TestDb::postgres("a_spool_file_mixing_records"), &lines)?;
        }
    }
}

// ---------------------------------------------------------------------------
// (b) Validation and bounds of a model outcome.

/// Any text: short arbitrary Unicode, or long runs of one (maybe multi-byte)
/// character, or a mix, sized around the limits that apply.
fn text(long: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => (any::<char>(), 0..long).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => (any::<String>(), any::<char>(), 0..long).prop_map(|(s, c, n)| {
            let mut t = c.to_string().repeat(n);
            t.push_str(&s);
            t
        }),
    ]
}

/// Text whose length in bytes is near `limit`, in one- to four-byte characters.
fn near(limit: usize) -> impl Strategy<Value = String> {
    (select(vec!['a', 'é', '€', '😀']), 0usize..8).prop_map(move |(c, extra)| {
        let n = (limit + extra).saturating_sub(4) / c.len_utf8();
        c.to_string().repeat(n)
    })
}

fn around(limit: usize) -> impl Strategy<Value = String> {
    prop_oneof![4 => any::<String>(), 1 => near(limit)]
}

fn duration() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0..1e6f64,
        1 => any::<f64>(),
        1 => select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, -1e-300, f64::MAX]),
    ]
}

fn kind() -> impl Strategy<Value = TestOutcome> {
    select(TestOutcome::ALL.to_vec())
}

prop_compose! {
    fn model_outcome()(
        seq in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        nodeid in prop_oneof![4 => "[a-z/_.:]{1,40}", 1 => Just(String::new()), 1 => " {1,3}", 1 => around(MAX_NODEID_BYTES)],
        outcome in kind(),
        duration in duration(),
        large in vec(text(70_000), 5),
        file in around(MAX_NODEID_BYTES),
        worker in around(MAX_NODEID_BYTES),
        markers in prop_oneof![4 => vec(around(1024), 0..4), 1 => vec("[a-z]{1,8}", 250..260)],
        attempt in prop_oneof![Just(0u32), any::<u32>()],
        subtest in prop_oneof![4 => any::<String>(), 1 => near(MAX_NODEID_BYTES)],
        user_properties in prop_oneof![
            4 => vec((around(MAX_PROPERTY_NAME_BYTES), around(MAX_PROPERTY_VALUE_BYTES)), 0..4),
            1 => vec(("[a-z]{1,4}", "[a-z]{0,4}"), 60..70),
        ],
    ) -> Outcome {
        let [message, longrepr, stdout, stderr, log] = <[String; 5]>::try_from(large).unwrap();
        Outcome {
            duration, message, longrepr, stdout, stderr, log, file, line: Some(3), markers,
            worker, attempt, started_at: None, subtest, user_properties,
            ..Outcome::new(seq, nodeid, outcome)
        }
    }
}

/// The field validation must name for `o`, if any: every rule, independently
/// of the order in which the code checks them.
fn faults(o: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    let mut fault = |bad: bool, field: &str| {
        if bad {
            out.push(field.to_string());
        }
    };
    fault(o.seq == 0, "seq");
    fault(
        o.nodeid.trim().is_empty() || o.nodeid.len() > MAX_NODEID_BYTES,
        "nodeid",
    );
    fault(!o.duration.is_finite() || o.duration < 0.0, "duration");
    fault(o.subtest.len() > MAX_NODEID_BYTES, "subtest");
    fault(o.file.len() > MAX_NODEID_BYTES, "file");
    fault(o.worker.len() > MAX_NODEID_BYTES, "worker");
    fault(o.markers.len() > 256, "markers");
    for (i, m) in o.markers.iter().enumerate() {
        fault(m.len() > 1024, &format!("markers[{i}]"));
    }
    out
}

/// Checks what validate_and_bound did to `before` (now `after`) with `max`.
fn check_validation(
    before: &Outcome,
    after: &Outcome,
    result: Result<(), Error>,
    max: usize,
) -> Result<(), TestCaseError> {
    let expected = faults(before);
    let err = match result {
        Ok(()) => {
            prop_assert!(
                expected.is_empty(),
                "accepted, but {:?} are at fault",
                expected
            );
            None
        }
        Err(e) => Some(e),
    };
    if let Some(e) = err {
        let text = e.to_string();
        let Error::InvalidArgument { field, .. } = &e else {
            return Err(TestCaseError::fail(format!(
                "not an invalid-argument error: {text}"
            )));
        };
        prop_assert!(text.starts_with(&format!("{field}: ")), "{}", text);
        prop_assert!(
            expected.contains(field),
            "{} names {}, at fault are {:?}",
            text,
            field,
            expected
        );
        return Ok(());
    }
    // Accepted: what identifies the outcome is untouched.
    prop_assert_eq!(after.seq, before.seq);
    prop_assert_eq!(&after.nodeid, &before.nodeid);
    prop_assert_eq!(&after.subtest, &before.subtest);
    prop_assert_eq!(&after.markers, &before.markers);
    prop_assert_eq!(&after.file, &before.file);
    prop_assert_eq!(&after.worker, &before.worker);
    prop_assert_eq!(after.attempt, before.attempt.max(1));
    // Large text: within the bound, cut with a visible marker when there is
    // room for one, keeping a head and a tail of the original.
    let pairs = [
        (&before.message, &after.message),
        (&before.longrepr, &after.longrepr),
        (&before.stdout, &after.stdout),
        (&before.stderr, &after.stderr),
        (&before.log, &after.log),
    ];
    for (was, now) in pairs {
        check_cut(was, now, max)?;
    }
    // Properties: at most MAX_PROPERTIES, each name and value within its bound.
    prop_assert!(after.user_properties.len() <= MAX_PROPERTIES);
    if before.user_properties.len() > MAX_PROPERTIES {
        prop_assert_eq!(
            after.user_properties.last().map(|(n, _)| n.as_str()),
            Some(PROPERTIES_TRUNCATED)
        );
    } else {
        prop_assert_eq!(after.user_properties.len(), before.user_properties.len());
    }
    for (i, (name, value)) in after.user_properties.iter().enumerate() {
        prop_assert!(
            name.len() <= MAX_PROPERTY_NAME_BYTES,
            "property {} name {} bytes",
            i,
            name.len()
        );
        prop_assert!(
            value.len() <= MAX_PROPERTY_VALUE_BYTES,
            "property {} value {} bytes",
            i,
            value.len()
        );
        if let Some((was_name, was_value)) = before.user_properties.get(i)
            && (i + 1 < MAX_PROPERTIES || before.user_properties.len() <= MAX_PROPERTIES)
        {
            check_cut(was_name, name, MAX_PROPERTY_NAME_BYTES)?;
            check_cut(was_value, value, MAX_PROPERTY_VALUE_BYTES)?;
        }
    }
    Ok(())
}

/// `now` is `was` if it fit in `max`, else at most `max` bytes: the marker
/// between a head and a tail of `was` when the marker fits, a head otherwise.
fn check_cut(was: &str, now: &str, max: usize) -> Result<(), TestCaseError> {
    if was.len() <= max {
        prop_assert_eq!(now, was);
        return Ok(());
    }
    prop_assert!(
        now.len() <= max,
        "{} bytes cut to {}, the bound is {}",
        was.len(),
        now.len(),
        max
    );
    let marker = format!("\n... {TRUNCATION_MARKER} {} bytes] ...\n", was.len() - max);
    match now.find(&marker) {
        Some(at) => {
            prop_assert!(
                was.starts_with(&now[..at]),
                "the head is not the original's"
            );
            prop_assert!(
                was.ends_with(&now[at + marker.len()..]),
                "the tail is not the original's"
            );
        }
        None => {
            prop_assert!(
                marker.len() > max,
                "no marker in {:?} though it fits in {}",
                now,
                max
            );
            prop_assert!(
                was.starts_with(now),
                "a cut without a marker keeps the head"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_names_the_field_at_fault_and_keeps_text_within_its_bound(
        o in model_outcome(),
        max in prop_oneof![1 => 0usize..100, 3 => 100usize..100_000],
    ) {
        let mut after = o.clone();
        let result = after.validate_and_bound(max);
        check_validation(&o, &after, result, max)?;
    }

    #[test]
    fn a_single_oversized_text_is_cut_to_any_bound_with_its_marker_when_that_fits(
        was in text(5000),
        max in 0usize..6000,
    ) {
        let mut now = was.clone();
        pytest_mcp::model::truncate_marked(&mut now, max);
        check_cut(&was, &now, max)?;
    }
}

// ---------------------------------------------------------------------------
// (c) Protobuf outcomes with any enum values and timestamps.

prop_compose! {
    fn pb_outcome()(
        seq in prop_oneof![Just(0u64), 1u64..1000, any::<u64>()],
        nodeid in prop_oneof![4 => "[a-z/_.:]{1,40}", 1 => Just(String::new()), 1 => around(MAX_NODEID_BYTES)],
        outcome in prop_oneof![4 => 0i32..=7, 1 => any::<i32>()],
        phase in prop_oneof![4 => 0i32..=5, 1 => any::<i32>()],
        duration in duration(),
        longrepr in text(70_000),
        markers in vec(around(1024), 0..3),
        attempt in any::<u32>(),
        line in any::<u32>(),
        started_at in option::of(prop_oneof![
            (0i64..4_000_000_000, 0i32..1_000_000_000),
            (any::<i64>(), any::<i32>()),
        ]),
        subtest in prop_oneof![4 => any::<String>(), 1 => near(MAX_NODEID_BYTES)],
        props in vec((around(MAX_PROPERTY_NAME_BYTES), around(MAX_PROPERTY_VALUE_BYTES)), 0..3),
    ) -> pb::Outcome {
        pb::Outcome {
            seq, nodeid, outcome, phase, duration, longrepr, markers, attempt, line, subtest,
            started_at: started_at.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            user_properties: props.into_iter().map(|(name, value)| pb::Property { name, value }).collect(),
            ..pb::Outcome::default()
        }
    }
}

/// The fields conversion must name for `o`, if any.
fn pb_faults(o: &pb::Outcome) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !(1..=6).contains(&o.outcome) {
        out.push("outcome");
    }
    if !(0..=4).contains(&o.phase) {
        out.push("phase");
    }
    if let Some(t) = &o.started_at {
        if !(0..1_000_000_000).contains(&t.nanos) {
            out.push("started_at.nanos");
        } else if t
            .seconds
            .checked_mul(1_000_000)
            .is_none_or(|s| s.checked_add(i64::from(t.nanos / 1000)).is_none())
        {
            out.push("started_at.seconds");
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_protobuf_outcome_converts_or_names_its_field_and_round_trips_once_valid(
        o in pb_outcome(),
        max in 100usize..100_000,
    ) {
        let expected = pb_faults(&o);
        let converted = match outcome_from_pb(o.clone()) {
            Ok(m) => {
                prop_assert!(expected.is_empty(), "converted, but {:?} are at fault", expected);
                m
            }
            Err(e) => {
                let text = e.to_string();
                let Error::InvalidArgument { field, .. } = &e else {
                    return Err(TestCaseError::fail(format!("not an invalid-argument error: {text}")));
                };
                prop_assert!(text.starts_with(&format!("{field}: ")), "{}", text);
                prop_assert!(expected.contains(&field.as_str()), "{} names {}, at fault are {:?}", text, field, expected);
                return Ok(());
            }
        };
        prop_assert_eq!(converted.seq, o.seq);
        prop_assert_eq!(&converted.nodeid, &o.nodeid);
        prop_assert_eq!(converted.line, (o.line != 0).then_some(o.line));
        let mut bounded = converted.clone();
        let result = bounded.validate_and_bound(max);
        let ok = result.is_ok();
        check_validation(&converted, &bounded, result, max)?;
        if ok {
            // What was accepted survives the trip to protobuf and back.
            let back = outcome_from_pb(outcome_to_pb("s", &bounded)).unwrap();
            prop_assert_eq!(back, bounded);
        }
    }
}

// ---------------------------------------------------------------------------
// (d) Text a peer chooses is read in linear time: the work the normaliser and
// the quarantine matcher count grows with the input's size, never faster,
// however pathological the text (runs of `[`, hex, quotes, `*`).

/// Text made of runs of what once made the normaliser or the matcher
/// quadratic, mixed with any characters.
fn pathological(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("0x".to_string()),
        Just("-".to_string()),
        Just("*".to_string()),
        Just("?".to_string()),
        Just("!".to_string()),
        Just("/tmp/".to_string()),
        Just(r"C:\".to_string()),
        Just(r"\temp\".to_string()),
        "[0-9a-f]{1,40}",
        "[0-9.]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    (vec((piece, 1usize..200), 1..40)).prop_map(move |runs| {
        let mut text = String::new();
        for (piece, times) in runs {
            for _ in 0..times {
                if text.len() + piece.len() > max {
                    return text;
                }
                text.push_str(&piece);
            }
        }
        text
    })
}

/// The bytes of `text` the normaliser reads.
fn read_by_normaliser(text: &str) -> &str {
    let mut end = text.len().min(fingerprint::MAX_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Python's `fnmatch.fnmatchcase` as the quarantine matcher decided it before
/// it was made linear: backtracking, and right (its unit test compares it
/// with Python), kept here as the reference on small inputs.
fn fnmatch_reference(pattern: &str, nodeid: &str) -> bool {
    fn class(p: &[char], start: usize, c: char) -> Option<(usize, bool)> {
        let mut i = start + 1;
        let negate = p.get(i) == Some(&'!');
        if negate {
            i += 1;
        }
        let (mut hit, mut first) = (false, true);
        loop {
            let &here = p.get(i)?;
            if here == ']' && !first {
                return Some((i + 1, hit != negate));
            }
            first = false;
            match (p.get(i + 1), p.get(i + 2)) {
                (Some('-'), Some(&hi)) if hi != ']' => {
                    hit |= here <= c && c <= hi;
                    i += 3;
                }
                _ => {
                    hit |= here == c;
                    i += 1;
                }
            }
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = nodeid.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class(&p, pi, n[ni]) {
                Some((end, true)) => Some(end),
                Some((_, false)) => None,
                None => (n[ni] == '[').then_some(pi + 1),
            },
            Some(&c) => (c == n[ni]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Small patterns and nodeids over an alphabet where wildcards, classes and
/// their brackets collide often.
fn small_glob() -> impl Strategy<Value = String> {
    "[ab*?\\[\\]!\\-]{0,10}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_normaliser_does_a_bounded_amount_of_work_per_character_and_bounds_its_answer(
        text in prop_oneof![pathological(80_000), any::<String>()],
    ) {
        let read = read_by_normaliser(&text);
        let (normalised, steps) = fingerprint::normalise_steps(&text);
        let chars = read.chars().count() as u64;
        prop_assert!(
            steps <= fingerprint::NORMALISE_STEPS_PER_CHAR * (chars + 1),
            "{} steps for {} characters", steps, chars
        );
        prop_assert!(normalised.len() <= read.len() * 9 / 2, "{} bytes from {}", normalised.len(), read.len());
        prop_assert!(normalised.len() <= fingerprint::MAX_NORMALISED_BYTES);
    }

    #[test]
    fn the_quarantine_matcher_does_a_bounded_amount_of_work_per_character_of_a_nodeid(
        pattern in pathological(MAX_NODEID_BYTES),
        nodeid in pathological(MAX_NODEID_BYTES),
    ) {
        // Patterns whose classes are too large are refused, naming the field.
        let compiled = match Pattern::new(&pattern) {
            Ok(p) => p,
            Err(e) => {
                prop_assert!(e.to_string().starts_with("nodeid: "), "{}", e);
                return Ok(());
            }
        };
        // The work per character is bounded whatever the pattern: at most 64
        // bit words twice, plus every class character.
        let per_char = compiled.steps_per_char();
        prop_assert!(per_char <= 2 * 64 + quarantine::MAX_PATTERN_CLASS_CHARS as u64 + 2);
        let (_, steps) = compiled.match_steps(&nodeid);
        let chars = nodeid.chars().count() as u64;
        prop_assert!(steps <= per_char * (chars + 1) + 1, "{} steps for {} characters", steps, chars);
    }

    #[test]
    fn the_linear_matcher_answers_as_fnmatchcase_does(
        pattern in small_glob(),
        nodeid in "[ab\\[\\]!\\-]{0,12}",
    ) {
        prop_assert_eq!(
            quarantine::matches(&pattern, &nodeid),
            fnmatch_reference(&pattern, &nodeid),
            "{:?} vs {:?}", pattern, nodeid
        );
    }
}
