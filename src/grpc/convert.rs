//! Conversions between the generated protobuf types and model types.
//! Validation errors name the protobuf field they came from.

use super::pb;
use crate::error::{Error, Result};
use crate::model::{
    CodeUnit, Environment, Outcome, OutcomeCounts, Phase, QuarantineEntry, Session, SessionStatus,
    Source, Summary, TestOutcome, Timestamp, UnitKind,
};

/// Model timestamp to protobuf.
pub fn timestamp_to_pb(t: Timestamp) -> prost_types::Timestamp {
    let micros = t.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// Protobuf timestamp to model, naming `field` when out of range.
pub fn timestamp_from_pb(t: &prost_types::Timestamp, field: &str) -> Result<Timestamp> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(
            format!("{field}.nanos"),
            format!("must be in 0..1000000000, got {}", t.nanos),
        ));
    }
    t.seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1000)))
        .map(Timestamp)
        .ok_or_else(|| Error::invalid(format!("{field}.seconds"), "out of range"))
}

/// Model source to protobuf.
pub fn source_to_pb(s: Source) -> pb::Source {
    match s {
        Source::Plugin => pb::Source::Plugin,
        Source::Mcp => pb::Source::Mcp,
        Source::Import => pb::Source::Import,
    }
}

/// Protobuf source to model; unspecified means the plugin.
pub fn source_from_pb(v: i32, field: &str) -> Result<Source> {
    match pb::Source::try_from(v) {
        Ok(pb::Source::Unspecified | pb::Source::Plugin) => Ok(Source::Plugin),
        Ok(pb::Source::Mcp) => Ok(Source::Mcp),
        Ok(pb::Source::Import) => Ok(Source::Import),
        Err(_) => Err(Error::invalid(field, format!("unknown source {v}"))),
    }
}

/// Model status to protobuf.
pub fn status_to_pb(s: SessionStatus) -> pb::SessionStatus {
    match s {
        SessionStatus::Running => pb::SessionStatus::Running,
        SessionStatus::Finished => pb::SessionStatus::Finished,
        SessionStatus::Interrupted => pb::SessionStatus::Interrupted,
        SessionStatus::Incomplete => pb::SessionStatus::Incomplete,
    }
}

/// Protobuf status filter value to model.
pub fn status_from_pb(v: i32, field: &str) -> Result<SessionStatus> {
    match pb::SessionStatus::try_from(v) {
        Ok(pb::SessionStatus::Running) => Ok(SessionStatus::Running),
        Ok(pb::SessionStatus::Finished) => Ok(SessionStatus::Finished),
        Ok(pb::SessionStatus::Interrupted) => Ok(SessionStatus::Interrupted),
        Ok(pb::SessionStatus::Incomplete) => Ok(SessionStatus::Incomplete),
        Ok(pb::SessionStatus::Unspecified) => Err(Error::invalid(
            field,
            "must not be SESSION_STATUS_UNSPECIFIED",
        )),
        Err(_) => Err(Error::invalid(field, format!("unknown session status {v}"))),
    }
}

/// Model outcome kind to protobuf.
pub fn test_outcome_to_pb(o: TestOutcome) -> pb::TestOutcome {
    match o {
        TestOutcome::Passed => pb::TestOutcome::Passed,
        TestOutcome::Failed => pb::TestOutcome::Failed,
        TestOutcome::Skipped => pb::TestOutcome::Skipped,
        TestOutcome::Error => pb::TestOutcome::Error,
        TestOutcome::Xfailed => pb::TestOutcome::Xfailed,
        TestOutcome::Xpassed => pb::TestOutcome::Xpassed,
    }
}

/// Protobuf outcome kind to model; unspecified and unknown values are rejected.
pub fn test_outcome_from_pb(v: i32, field: &str) -> Result<TestOutcome> {
    let expected = "expected one of TEST_OUTCOME_PASSED, TEST_OUTCOME_FAILED, TEST_OUTCOME_SKIPPED, \
                    TEST_OUTCOME_ERROR, TEST_OUTCOME_XFAILED, TEST_OUTCOME_XPASSED";
    match pb::TestOutcome::try_from(v) {
        Ok(pb::TestOutcome::Passed) => Ok(TestOutcome::Passed),
        Ok(pb::TestOutcome::Failed) => Ok(TestOutcome::Failed),
        Ok(pb::TestOutcome::Skipped) => Ok(TestOutcome::Skipped),
        Ok(pb::TestOutcome::Error) => Ok(TestOutcome::Error),
        Ok(pb::TestOutcome::Xfailed) => Ok(TestOutcome::Xfailed),
        Ok(pb::TestOutcome::Xpassed) => Ok(TestOutcome::Xpassed),
        Ok(pb::TestOutcome::Unspecified) => {
            Err(Error::invalid(field, format!("is not set; {expected}")))
        }
        Err(_) => Err(Error::invalid(
            field,
            format!("unknown outcome {v}; {expected}"),
        )),
    }
}

fn phase_to_pb(p: Option<Phase>) -> pb::Phase {
    match p {
        None => pb::Phase::Unspecified,
        Some(Phase::Collect) => pb::Phase::Collect,
        Some(Phase::Setup) => pb::Phase::Setup,
        Some(Phase::Call) => pb::Phase::Call,
        Some(Phase::Teardown) => pb::Phase::Teardown,
    }
}

fn phase_from_pb(v: i32, field: &str) -> Result<Option<Phase>> {
    match pb::Phase::try_from(v) {
        Ok(pb::Phase::Unspecified) => Ok(None),
        Ok(pb::Phase::Collect) => Ok(Some(Phase::Collect)),
        Ok(pb::Phase::Setup) => Ok(Some(Phase::Setup)),
        Ok(pb::Phase::Call) => Ok(Some(Phase::Call)),
        Ok(pb::Phase::Teardown) => Ok(Some(Phase::Teardown)),
        Err(_) => Err(Error::invalid(field, format!("unknown phase {v}"))),
    }
}

/// Model environment to protobuf.
pub fn environment_to_pb(e: &Environment) -> pb::Environment {
    pb::Environment {
        os: e.os.clone(),
        python_version: e.python_version.clone(),
        python_implementation: e.python_implementation.clone(),
        pytest_version: e.pytest_version.clone(),
        plugins: e.plugins.clone(),
        hostname: e.hostname.clone(),
        rootdir: e.rootdir.clone(),
        project: e.project.clone(),
        invocation_args: e.invocation_args.clone(),
        git_commit: e.git_commit.clone(),
        git_branch: e.git_branch.clone(),
        git_dirty: e.git_dirty,
        ci_provider: e.ci_provider.clone(),
        xdist_workers: e.xdist_workers,
        extra: e.extra.clone().into_iter().collect(),
        code_state: e.code_state.clone(),
        watched_files: e.watched_files.clone().into_iter().collect(),
        packages: e.packages.clone(),
        selection: e.selection.clone(),
    }
}

/// Protobuf environment to model; the store checks its size and fields,
/// as it does for every path.
pub fn environment_from_pb(e: pb::Environment) -> Result<Environment> {
    Ok(Environment {
        os: e.os,
        python_version: e.python_version,
        python_implementation: e.python_implementation,
        pytest_version: e.pytest_version,
        plugins: e.plugins,
        hostname: e.hostname,
        rootdir: e.rootdir,
        project: e.project,
        invocation_args: e.invocation_args,
        git_commit: e.git_commit,
        git_branch: e.git_branch,
        git_dirty: e.git_dirty,
        ci_provider: e.ci_provider,
        xdist_workers: e.xdist_workers,
        extra: e.extra.into_iter().collect(),
        code_state: e.code_state,
        watched_files: e.watched_files.into_iter().collect(),
        packages: e.packages,
        selection: e.selection,
    })
}

/// Model summary to protobuf.
pub fn summary_to_pb(s: &Summary) -> pb::Summary {
    pb::Summary {
        total_tests: s.total_tests,
        passed: s.passed,
        failed: s.failed,
        skipped: s.skipped,
        errors: s.errors,
        xfailed: s.xfailed,
        xpassed: s.xpassed,
        exitstatus: s.exitstatus,
        duration: s.duration,
    }
}

/// Protobuf summary to model.
pub fn summary_from_pb(s: pb::Summary) -> Summary {
    Summary {
        total_tests: s.total_tests,
        passed: s.passed,
        failed: s.failed,
        skipped: s.skipped,
        errors: s.errors,
        xfailed: s.xfailed,
        xpassed: s.xpassed,
        exitstatus: s.exitstatus,
        duration: s.duration,
    }
}

fn counts_to_pb(c: &OutcomeCounts) -> pb::OutcomeCounts {
    pb::OutcomeCounts {
        passed: c.passed,
        failed: c.failed,
        skipped: c.skipped,
        errors: c.errors,
        xfailed: c.xfailed,
        xpassed: c.xpassed,
    }
}

/// Model session to protobuf.
pub fn session_to_pb(s: &Session) -> pb::Session {
    pb::Session {
        id: s.id.to_string(),
        source: source_to_pb(s.source).into(),
        status: status_to_pb(s.status).into(),
        started_at: Some(timestamp_to_pb(s.started_at)),
        finished_at: s.finished_at.map(timestamp_to_pb),
        environment: Some(environment_to_pb(&s.environment)),
        summary: s.summary.as_ref().map(summary_to_pb),
        outcomes_stored: s.outcomes_stored,
        outcomes_expected: s.outcomes_expected,
        counts: Some(counts_to_pb(&s.counts)),
        pinned: s.pinned,
    }
}

/// Model quarantine entry to protobuf.
pub fn quarantine_to_pb(e: &QuarantineEntry) -> pb::QuarantineEntry {
    pb::QuarantineEntry {
        pattern: e.pattern.clone(),
        project: e.project.clone(),
        reason: e.reason.clone(),
        added_by: e.added_by.clone(),
        added_at: Some(timestamp_to_pb(e.added_at)),
        expires_at: Some(timestamp_to_pb(e.expires_at)),
    }
}

/// Model outcome to protobuf.
pub fn outcome_to_pb(session_id: &str, o: &Outcome) -> pb::Outcome {
    pb::Outcome {
        session_id: session_id.to_string(),
        seq: o.seq,
        nodeid: o.nodeid.clone(),
        outcome: test_outcome_to_pb(o.outcome).into(),
        phase: phase_to_pb(o.phase).into(),
        duration: o.duration,
        message: o.message.clone(),
        longrepr: o.longrepr.clone(),
        file: o.file.clone(),
        line: o.line.unwrap_or(0),
        markers: o.markers.clone(),
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
        log: o.log.clone(),
        worker: o.worker.clone(),
        attempt: o.attempt,
        started_at: o.started_at.map(timestamp_to_pb),
        subtest: o.subtest.clone(),
        user_properties: o
            .user_properties
            .iter()
            .map(|(name, value)| pb::Property {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        quarantined: o.quarantined,
        deps: o.deps.as_ref().map(|units| pb::TestDependencies {
            units: units.clone(),
        }),
    }
}

/// Protobuf outcome to model; errors name fields relative to the outcome
/// (place them with [`Error::within`]). The result still needs
/// [`Outcome::validate_and_bound`].
pub fn outcome_from_pb(o: pb::Outcome) -> Result<Outcome> {
    Ok(Outcome {
        seq: o.seq,
        outcome: test_outcome_from_pb(o.outcome, "outcome")?,
        phase: phase_from_pb(o.phase, "phase")?,
        nodeid: o.nodeid,
        duration: o.duration,
        message: o.message,
        longrepr: o.longrepr,
        stdout: o.stdout,
        stderr: o.stderr,
        log: o.log,
        file: o.file,
        line: (o.line != 0).then_some(o.line),
        markers: o.markers,
        worker: o.worker,
        attempt: o.attempt.max(1),
        started_at: o
            .started_at
            .as_ref()
            .map(|t| timestamp_from_pb(t, "started_at"))
            .transpose()?,
        subtest: o.subtest,
        user_properties: o
            .user_properties
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect(),
        quarantined: o.quarantined,
        deps: o.deps.map(|d| d.units),
    })
}

/// Model unit kind to protobuf.
pub fn unit_kind_to_pb(k: UnitKind) -> pb::UnitKind {
    match k {
        UnitKind::Function => pb::UnitKind::Function,
        UnitKind::Class => pb::UnitKind::Class,
        UnitKind::Module => pb::UnitKind::Module,
        UnitKind::File => pb::UnitKind::File,
    }
}

/// Protobuf unit kind to model; unset or unknown is refused, naming `field`.
pub fn unit_kind_from_pb(v: i32, field: &str) -> Result<UnitKind> {
    match pb::UnitKind::try_from(v) {
        Ok(pb::UnitKind::Function) => Ok(UnitKind::Function),
        Ok(pb::UnitKind::Class) => Ok(UnitKind::Class),
        Ok(pb::UnitKind::Module) => Ok(UnitKind::Module),
        Ok(pb::UnitKind::File) => Ok(UnitKind::File),
        Ok(pb::UnitKind::Unspecified) => Err(Error::invalid(
            field,
            "is not set; expected function, class, module or file",
        )),
        Err(_) => Err(Error::invalid(field, format!("unknown unit kind {v}"))),
    }
}

/// A described change to model; errors name `change.*` fields.
pub fn change_from_pb(c: Option<pb::Change>) -> Result<crate::store::affected::ChangeInput> {
    use crate::store::affected::{ChangeInput, CurrentUnit, normalise_path};
    let Some(change) = c.and_then(|c| c.change) else {
        return Err(Error::invalid(
            "change",
            "is not set; give working_tree, files or diff",
        ));
    };
    Ok(match change {
        pb::change::Change::WorkingTree(t) => ChangeInput::WorkingTree {
            units: t
                .units
                .into_iter()
                .enumerate()
                .map(|(i, u)| {
                    Ok(CurrentUnit {
                        kind: unit_kind_from_pb(
                            u.kind,
                            &format!("change.working_tree.units[{i}].kind"),
                        )?,
                        path: normalise_path(&u.path),
                        name: u.name,
                        checksum: u.checksum,
                    })
                })
                .collect::<Result<_>>()?,
            watched: t
                .watched_files
                .into_iter()
                .map(|u| (normalise_path(&u.path), u.checksum))
                .collect(),
            packages: t.packages,
        },
        pb::change::Change::Files(f) => ChangeInput::Files(f.paths),
        pb::change::Change::Diff(d) => ChangeInput::Diff(d),
    })
}

/// Protobuf code unit to model (checked by [`CodeUnit::validate`] in the
/// store); errors name fields relative to the unit.
pub fn unit_from_pb(u: pb::CodeUnit) -> Result<CodeUnit> {
    Ok(CodeUnit {
        key: u.key,
        code: u.code,
        kind: unit_kind_from_pb(u.kind, "kind")?,
        path: u.path,
        name: u.name,
        line_start: u.line_start,
        line_end: u.line_end,
        checksum: u.checksum,
    })
}
