//! The small integers outcome kinds and phases are stored as, the same in
//! every backend and in every blob (digests), so that one decoder reads all.

use crate::model::{Phase, TestOutcome, UnitKind};

/// The outcome kinds as stored: small integers in [`TestOutcome::ALL`] order, from 1.
pub fn kind_code(kind: TestOutcome) -> i64 {
    match kind {
        TestOutcome::Passed => 1,
        TestOutcome::Failed => 2,
        TestOutcome::Skipped => 3,
        TestOutcome::Error => 4,
        TestOutcome::Xfailed => 5,
        TestOutcome::Xpassed => 6,
    }
}

/// The outcome kind of a stored code.
pub fn kind_of(code: i64) -> Option<TestOutcome> {
    Some(match code {
        1 => TestOutcome::Passed,
        2 => TestOutcome::Failed,
        3 => TestOutcome::Skipped,
        4 => TestOutcome::Error,
        5 => TestOutcome::Xfailed,
        6 => TestOutcome::Xpassed,
        _ => return None,
    })
}

/// The phases as stored.
pub fn phase_code(phase: Phase) -> i64 {
    match phase {
        Phase::Collect => 1,
        Phase::Setup => 2,
        Phase::Call => 3,
        Phase::Teardown => 4,
    }
}

/// The phase of a stored code.
pub fn phase_of(code: i64) -> Option<Phase> {
    Some(match code {
        1 => Phase::Collect,
        2 => Phase::Setup,
        3 => Phase::Call,
        4 => Phase::Teardown,
        _ => return None,
    })
}

/// The file column: NULL when the file is the nodeid's own path (nearly
/// always), else the file itself ("" for none).
pub fn file_column<'a>(nodeid: &str, file: &'a str) -> Option<&'a str> {
    (nodeid.split("::").next() != Some(file) || file.is_empty()).then_some(file)
}

/// The file of an outcome from its file column.
pub fn file_from_column(nodeid: &str, column: Option<String>) -> String {
    column.unwrap_or_else(|| nodeid.split("::").next().unwrap_or_default().to_string())
}

/// The unit kinds as stored.
pub fn unit_kind_code(kind: UnitKind) -> i64 {
    match kind {
        UnitKind::Function => 1,
        UnitKind::Class => 2,
        UnitKind::Module => 3,
        UnitKind::File => 4,
    }
}

/// The unit kind of a stored code.
pub fn unit_kind_of(code: i64) -> Option<UnitKind> {
    Some(match code {
        1 => UnitKind::Function,
        2 => UnitKind::Class,
        3 => UnitKind::Module,
        4 => UnitKind::File,
        _ => return None,
    })
}
