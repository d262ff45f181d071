//! A fuzz harness for every parser that takes bytes from a peer, run as
//! bounded proptest cases so it fits in CI: protobuf messages decoded from
//! any bytes and converted, spool lines, policy files, MCP tool arguments,
//! failure fingerprints and quarantine patterns.
//!
//! The property is the same everywhere: no input panics, an error names the
//! field at fault where the API promises one, and what is accepted stays
//! within its documented bounds. On a failure proptest prints the smallest
//! input it found and records it under `proptest-regressions/`.

#![allow(clippy::unwrap_used)]

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value, json};

use pytest_mcp::error::Error;
use pytest_mcp::grpc::convert::{environment_from_pb, outcome_from_pb, summary_from_pb};
use pytest_mcp::grpc::pb;
use pytest_mcp::mcp::args::{
    FailuresArgs, HistoryArgs, ListSessionsArgs, QuarantineArgs, SessionFinishArgs,
    SessionStartArgs, TestOutcomeArgs, session_id,
};
use pytest_mcp::model::{
    DEFAULT_MAX_FIELD_BYTES, MAX_NODEID_BYTES, Outcome, Summary, TestOutcome, Timestamp,
};
use pytest_mcp::policy::file::Policy;
use pytest_mcp::spool::import_file;
use pytest_mcp::store::fingerprint::{
    self, Fingerprint, MAX_MESSAGE_BYTES, MAX_NORMALISED_BYTES, MAX_TRACEBACK_BYTES, StoredCause,
};
use pytest_mcp::store::location::Location;
use pytest_mcp::store::quarantine::{self, MAX_DAYS, MAX_REASON_BYTES, NewQuarantine, Pattern};
use pytest_mcp::store::{Store, StoreConfig};

/// An error names a field: it is an invalid-argument error whose text
/// starts with that field, which is one of `allowed` (by its last part).
fn names_field(e: &Error, allowed: &[&str]) -> Result<(), TestCaseError> {
    let text = e.to_string();
    let Error::InvalidArgument { field, .. } = e else {
        return Err(TestCaseError::fail(format!(
            "not an invalid-argument error: {text}"
        )));
    };
    prop_assert!(text.starts_with(&format!("{field}: ")), "{}", text);
    let last = field.rsplit('.').next().unwrap_or(field);
    let last = last.split('[').next().unwrap_or(last);
    prop_assert!(
        allowed.contains(&last),
        "{} names {:?}, expected one of {:?}",
        text,
        field,
        allowed
    );
    Ok(())
}

/// Bytes that are often a valid encoding: a real message's bytes with some
/// of them changed, cut or extended, or else any bytes.
fn protobuf_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = pb::Outcome {
        seq: 7,
        nodeid: "tests/t.py::test_x[1]".into(),
        outcome: 2,
        phase: 2,
        duration: 0.5,
        message: "AssertionError: [[[ 0xdeadbeef".into(),
        longrepr: "E   AssertionError\n\ntests/t.py:3: AssertionError".into(),
        markers: vec!["slow".into()],
        started_at: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 2,
        }),
        user_properties: vec![pb::Property {
            name: "n".into(),
            value: "v".into(),
        }],
        ..pb::Outcome::default()
    }
    .encode_to_vec();
    prop_oneof![
        vec(any::<u8>(), 0..600),
        (
            vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            0..valid.len() + 1
        )
            .prop_map(move |(edits, cut)| {
                let mut b = valid.clone();
                for (at, byte) in edits {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                b.truncate(cut.max(1));
                b
            }),
    ]
}

/// JSON values of any shape, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(-1.0f64), Just(f64::MAX), Just(1e300), any::<f64>()]
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            "[a-z_:/.\\[\\]*]{0,30}",
            Just("5f0c2a52-3c1e-4d0e-9a57-8a1f0b7f3c01".to_string()),
            Just("x".repeat(MAX_NODEID_BYTES + 1)),
            any::<String>(),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys the parsers know (so values reach their checks), and any other.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "type", "session_id", "session", "seq", "nodeid", "outcome", "phase", "duration",
            "error", "environment", "os", "python_version", "project", "summary", "total_tests",
            "passed", "failed", "skipped", "exitstatus", "errors", "outcomes_sent", "started_at",
            "finished_at", "limit", "cursor", "reason", "days", "version", "default", "tools",
            "limits", "counter", "window", "max", "scope", "action", "hide", "all_tools",
            "message", "longrepr", "status",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{1,8}",
    ]
}

/// A JSON object made of known keys with any values.
fn json_object() -> impl Strategy<Value = Value> {
    btree_map(key(), json_value(), 0..8).prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Text with runs of what is costly to read: brackets, hex, quotes, paths,
/// and traceback-like lines.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[".to_string()),
        Just("'".to_string()),
        Just("0x".to_string()),
        Just("\n".to_string()),
        Just("E   ValueError: ".to_string()),
        Just("tests/t.py:12: in f\n".to_string()),
        Just("/usr/lib/python3.12/x.py:1: KeyError\n".to_string()),
        Just("    def helper(x):\n".to_string()),
        Just("/tmp/".to_string()),
        "[0-9a-f-]{1,40}",
        any::<String>(),
    ];
    vec((piece, 1usize..3000), 0..8).prop_map(move |runs| {
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn protobuf_messages_from_any_bytes_convert_or_name_their_field_and_stay_bounded(
        bytes in protobuf_bytes(),
    ) {
        if let Ok(o) = pb::Outcome::decode(bytes.as_slice()) {
            match outcome_from_pb(o) {
                Ok(mut o) => {
                    // What converts is then validated and bounded, as the
                    // handler does; an error names the field.
                    match o.validate_and_bound(DEFAULT_MAX_FIELD_BYTES) {
                        Ok(()) => {
                            prop_assert!(o.nodeid.len() <= MAX_NODEID_BYTES);
                            for text in [&o.message, &o.longrepr, &o.stdout, &o.stderr, &o.log] {
                                prop_assert!(text.len() <= DEFAULT_MAX_FIELD_BYTES);
                            }
                        }
                        Err(e) => names_field(&e, &["nodeid", "duration", "seq", "attempt", "subtest", "markers", "started_at", "line", "file", "worker", "user_properties", "name", "outcome", "phase", "message"])?,
                    }
                }
                Err(e) => names_field(&e, &["outcome", "phase", "nanos", "seconds", "started_at"])?,
            }
        }
        if let Ok(r) = pb::StartSessionRequest::decode(bytes.as_slice())
            && let Some(env) = r.environment
            && let Err(e) = environment_from_pb(env)
        {
            // Every environment field is a text or a list of them; the error
            // is the one place that names it.
            prop_assert!(matches!(e, Error::InvalidArgument { .. }), "{}", e);
        }
        if let Ok(r) = pb::FinishSessionRequest::decode(bytes.as_slice())
            && let Some(s) = r.summary
        {
            let _: Summary = summary_from_pb(s);
        }
    }

    #[test]
    fn mcp_arguments_of_any_shape_are_refused_with_their_path_or_convert_with_a_named_field(
        args in json_object(),
    ) {
        // Deserialized as the tool handler does (serde_path_to_error).
        fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
            serde_path_to_error::deserialize(v.clone()).map_err(|e| format!("{}: {}", e.path(), e.inner()))
        }
        if let Ok(a) = parse::<TestOutcomeArgs>(&args) {
            match a.to_outcome() {
                Ok(o) => prop_assert!(o.nodeid.len() <= MAX_NODEID_BYTES),
                Err(e) => names_field(&e, &["nodeid", "duration"])?,
            }
        }
        if let Ok(a) = parse::<SessionFinishArgs>(&args)
            && let Err(e) = Summary::try_from(&a.summary)
        {
            names_field(&e, &["total_tests", "passed", "failed", "skipped", "errors", "xfailed", "xpassed", "duration", "exitstatus"])?;
        }
        let _ = parse::<SessionStartArgs>(&args);
        let _ = parse::<ListSessionsArgs>(&args);
        let _ = parse::<FailuresArgs>(&args);
        let _ = parse::<HistoryArgs>(&args);
        if let Ok(a) = parse::<QuarantineArgs>(&args) {
            let new = NewQuarantine {
                pattern: a.nodeid,
                project: a.project.unwrap_or_default(),
                reason: a.reason,
                added_by: "fuzz".into(),
                days: a.days,
            };
            match new.entry(Timestamp(0)) {
                Ok(e) => {
                    prop_assert!(e.reason.len() <= MAX_REASON_BYTES);
                    prop_assert!(e.expires_at.as_micros() <= i64::from(MAX_DAYS) * 86_400_000_000);
                }
                Err(e) => names_field(&e, &["nodeid", "reason", "days", "project"])?,
            }
        }
        if let Some(Value::String(s)) = args.get("session")
            && let Err(e) = session_id(Some(s), "session")
        {
            names_field(&e, &["session"])?;
        }
    }

    #[test]
    fn policy_files_of_any_text_or_shape_parse_or_say_where_they_are_wrong(
        doc in prop_oneof![
            json_object().prop_map(|v| v.to_string()),
            json_object().prop_map(|tools| json!({"version": 1, "default": "allow", "tools": {"get_session": tools}}).to_string()),
            any::<String>(),
        ],
    ) {
        let known = vec!["get_session".to_string(), "record_test_outcome".to_string()];
        match Policy::parse(&doc, &known) {
            Ok(p) => {
                for tool in p.tools.keys() {
                    prop_assert!(known.contains(tool), "{} is not a known tool", tool);
                }
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!e.message.is_empty(), "{:?}", e);
                if !e.place.is_empty() {
                    prop_assert!(text.starts_with(&format!("{}: ", e.place)), "{}", text);
                }
            }
        }
    }

    #[test]
    fn any_failure_text_gets_a_fingerprint_within_its_bounds(
        message in hostile_text(100_000),
        longrepr in hostile_text(200_000),
        nodeid in prop_oneof!["[a-z/_.:\\[\\]]{1,60}", Just("[".repeat(MAX_NODEID_BYTES))],
        failing in any::<bool>(),
    ) {
        let o = Outcome {
            message,
            longrepr,
            ..Outcome::new(1, nodeid.clone(), if failing { TestOutcome::Failed } else { TestOutcome::Passed })
        };
        let f = Fingerprint::of(&o);
        let key = f.key();
        prop_assert_eq!(key.len(), 16);
        prop_assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        prop_assert!(f.message.len() <= MAX_NORMALISED_BYTES);
        prop_assert!(f.exception.len() <= MAX_TRACEBACK_BYTES.max(MAX_MESSAGE_BYTES));
        prop_assert!(f.frame.len() <= MAX_TRACEBACK_BYTES + nodeid.len());
        prop_assert_eq!(StoredCause::of(&o).is_some(), failing);
        prop_assert!(fingerprint::normalise(&o.message).len() <= MAX_NORMALISED_BYTES);
    }

    #[test]
    fn any_quarantine_pattern_compiles_or_names_the_nodeid_and_matches_without_a_panic(
        pattern in prop_oneof![
            "[a-z*?!\\[\\]\\-]{0,40}",
            any::<String>(),
            Just(format!("*{}", "[".repeat(MAX_NODEID_BYTES - 1))),
            Just(format!("[{}]", "a".repeat(300))),
        ],
        nodeid in prop_oneof!["[a-z\\[\\]\\-]{0,40}", any::<String>(), Just(format!("{}x", "[".repeat(MAX_NODEID_BYTES - 1)))],
    ) {
        match Pattern::new(&pattern) {
            Ok(p) => {
                prop_assert_eq!(p.matches(&nodeid), quarantine::matches(&pattern, &nodeid));
                let (_, steps) = p.match_steps(&nodeid);
                prop_assert!(steps <= p.steps_per_char() * (nodeid.chars().count() as u64 + 1) + 1);
            }
            Err(e) => names_field(&e, &["nodeid"])?,
        }
    }
}

proptest! {
    // Each case opens a database: fewer of them.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn spool_lines_of_any_json_shape_are_refused_by_file_and_line_without_a_panic(
        lines in vec(prop_oneof![
            json_object(),
            json_object().prop_map(|mut v| { v["type"] = json!("outcome"); v }),
            json_object().prop_map(|mut v| { v["type"] = json!("start"); v["session_id"] = json!("5f0c2a52-3c1e-4d0e-9a57-8a1f0b7f3c01"); v }),
            json_object().prop_map(|mut v| { v["type"] = json!("finish"); v }),
        ], 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spool.jsonl");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&file, &text).unwrap();
        let name = file.display().to_string();
        let db = dir.path().join("db.sqlite");
        runtime().block_on(async {
            let store = Store::open(StoreConfig::new(Location::parse(db.as_os_str()).unwrap())).await.unwrap();
            let report = import_file(&store, &file).await;
            store.shutdown().await;
            let report = report.map_err(|e| TestCaseError::fail(e.to_string()))?;
            for e in &report.errors {
                prop_assert!(e.starts_with(&format!("{name}:")), "{}", e);
            }
            Ok(())
        })?;
    }
}
