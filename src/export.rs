//! Renders a stored session for other tools: JSON in the documented shape,
//! and JUnit XML as CI dashboards read it (one testcase per outcome).
//!
//! Both writers stream outcomes page by page, so exporting a session of a
//! million outcomes does not hold them all in memory.

use serde_json::{Value, json};
use std::io::Write;

use crate::error::{Error, Result};
use crate::model::{Outcome, Session, SessionRef, TestOutcome};
use crate::store::{OutcomeFilter, Store};

const PAGE: usize = 2000;

/// The `session` object of the JSON export.
pub fn session_json(s: &Session) -> Value {
    let summary = match &s.summary {
        Some(sum) => json!({
            "total_tests": sum.total_tests,
            "passed": sum.passed,
            "failed": sum.failed,
            "skipped": sum.skipped,
            "errors": sum.errors,
            "xfailed": sum.xfailed,
            "xpassed": sum.xpassed,
            "exitstatus": sum.exitstatus,
            "duration": sum.duration,
        }),
        // A running session has no summary from pytest yet: report what is
        // stored, with no exit status or duration.
        None => json!({
            "total_tests": s.counts.total(),
            "passed": s.counts.passed,
            "failed": s.counts.failed,
            "skipped": s.counts.skipped,
            "errors": s.counts.errors,
            "xfailed": s.counts.xfailed,
            "xpassed": s.counts.xpassed,
            "exitstatus": null,
            "duration": null,
        }),
    };
    json!({
        "id": s.id.to_string(),
        "status": s.status.as_str(),
        "source": s.source.as_str(),
        "started_at": s.started_at.to_rfc3339(),
        "finished_at": s.finished_at.map(|t| t.to_rfc3339()),
        "environment": serde_json::to_value(&s.environment).unwrap_or(Value::Null),
        "summary": summary,
        "pinned": s.pinned,
    })
}

/// One element of the JSON export's `outcomes` array.
pub fn outcome_json(o: &Outcome) -> Value {
    let mut value = json!({
        "seq": o.seq,
        "nodeid": o.nodeid,
        "outcome": o.outcome.as_str(),
        "phase": o.phase.map(|p| p.as_str()),
        "duration": o.duration,
        "message": o.message,
        "longrepr": o.longrepr,
        "stdout": o.stdout,
        "stderr": o.stderr,
        "log": o.log,
        "file": o.file,
        "line": o.line,
        "markers": o.markers,
        "worker": o.worker,
        "attempt": o.attempt,
        "subtest": (!o.subtest.is_empty()).then_some(&o.subtest),
        "user_properties": o
            .user_properties
            .iter()
            .map(|(name, value)| [name, value])
            .collect::<Vec<_>>(),
    });
    if o.quarantined {
        // Only when set, as in the spool format: exports of runs without
        // quarantine keep the shape they always had.
        value["quarantined"] = Value::Bool(true);
    }
    value
}

fn io_err(e: std::io::Error) -> Error {
    Error::Internal(format!("writing the export: {e}"))
}

/// Calls `each` for every outcome of the session, in seq order, page by page.
async fn for_each_outcome(
    store: &Store,
    session: &Session,
    mut each: impl FnMut(&Outcome) -> Result<()>,
) -> Result<()> {
    let mut cursor = None;
    loop {
        let (_, page) = store
            .list_outcomes(
                SessionRef::Id(session.id),
                OutcomeFilter::default(),
                PAGE,
                cursor,
            )
            .await?;
        for o in &page.items {
            each(o)?;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// Writes `{"session": {...}, "outcomes": [...]}`.
pub async fn write_json(store: &Store, session: &Session, out: &mut dyn Write) -> Result<()> {
    let head = serde_json::to_string(&session_json(session))
        .map_err(|e| Error::Internal(e.to_string()))?;
    write!(out, "{{\"session\": {head}, \"outcomes\": [").map_err(io_err)?;
    let mut first = true;
    for_each_outcome(store, session, |o| {
        let sep = if first { "\n  " } else { ",\n  " };
        first = false;
        let text =
            serde_json::to_string(&outcome_json(o)).map_err(|e| Error::Internal(e.to_string()))?;
        write!(out, "{sep}{text}").map_err(io_err)
    })
    .await?;
    writeln!(out, "\n]}}").map_err(io_err)
}

/// Escapes text for XML content and attributes; characters XML 1.0 cannot
/// carry at all are written as `\xNN`, as pytest's own junitxml does.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Splits a nodeid into JUnit's classname and name as pytest's junitxml does:
/// `tests/test_a.py::TestX::test_b[1]` -> (`tests.test_a.TestX`, `test_b[1]`).
pub fn junit_names(nodeid: &str) -> (String, String) {
    let mut parts: Vec<&str> = nodeid.split("::").collect();
    let name = parts.pop().unwrap_or(nodeid).to_string();
    let mut class: Vec<String> = Vec::new();
    if let Some(file) = parts.first() {
        let module = file.strip_suffix(".py").unwrap_or(file);
        class.push(module.replace(['/', '\\'], "."));
    }
    class.extend(parts.iter().skip(1).map(|p| p.to_string()));
    (class.join("."), name)
}

/// Writes JUnit XML: one `<testsuite>` with one `<testcase>` per outcome
/// (reruns appear as repeated testcases, as pytest-rerunfailures reports them).
pub async fn write_junit(store: &Store, session: &Session, out: &mut dyn Write) -> Result<()> {
    let c = session.counts;
    let tests = c.total();
    let duration = session
        .summary
        .as_ref()
        .map(|s| s.duration)
        .unwrap_or_default();
    let suite_name = if session.environment.project.is_empty() {
        "pytest".to_string()
    } else {
        session.environment.project.clone()
    };
    let w = |out: &mut dyn Write, s: &str| out.write_all(s.as_bytes()).map_err(io_err);
    w(out, "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n")?;
    w(
        out,
        &format!(
            "<testsuites name=\"pytest-mcp\" tests=\"{tests}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{duration:.3}\">\n",
            c.failed,
            c.errors,
            c.skipped + c.xfailed
        ),
    )?;
    w(
        out,
        &format!(
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{duration:.3}\" timestamp=\"{}\" hostname=\"{}\">\n",
            xml_escape(&suite_name),
            c.failed,
            c.errors,
            c.skipped + c.xfailed,
            session.started_at.to_rfc3339(),
            xml_escape(&session.environment.hostname),
        ),
    )?;
    w(out, "    <properties>\n")?;
    let mut props = vec![
        ("session_id", session.id.to_string()),
        ("status", session.status.to_string()),
    ];
    let env = &session.environment;
    for (k, v) in [
        ("python_version", &env.python_version),
        ("pytest_version", &env.pytest_version),
        ("git_commit", &env.git_commit),
        ("git_branch", &env.git_branch),
    ] {
        if !v.is_empty() {
            props.push((k, v.clone()));
        }
    }
    for (k, v) in props {
        w(
            out,
            &format!(
                "      <property name=\"{k}\" value=\"{}\"/>\n",
                xml_escape(&v)
            ),
        )?;
    }
    w(out, "    </properties>\n")?;

    for_each_outcome(store, session, |o| {
        let (classname, mut name) = junit_names(&o.nodeid);
        if o.is_subtest() {
            // Each subtest is a testcase of its own, named as pytest shows it.
            name = format!("{name} {}", o.subtest);
        }
        let mut tc = format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&classname),
            xml_escape(&name),
            o.duration
        );
        if !o.file.is_empty() {
            tc.push_str(&format!(" file=\"{}\"", xml_escape(&o.file)));
        }
        if let Some(line) = o.line {
            tc.push_str(&format!(" line=\"{line}\""));
        }
        tc.push('>');
        if !o.user_properties.is_empty() {
            // Where pytest's own junitxml puts record_property values.
            tc.push_str("\n      <properties>");
            for (name, value) in &o.user_properties {
                tc.push_str(&format!(
                    "\n        <property name=\"{}\" value=\"{}\"/>",
                    xml_escape(name),
                    xml_escape(value)
                ));
            }
            tc.push_str("\n      </properties>");
        }
        let message = xml_escape(&o.message);
        let body = xml_escape(&o.longrepr);
        match o.outcome {
            TestOutcome::Passed => {}
            TestOutcome::Xpassed => {}
            TestOutcome::Failed => {
                tc.push_str(&format!(
                    "\n      <failure message=\"{message}\">{body}</failure>"
                ));
            }
            TestOutcome::Error => {
                tc.push_str(&format!(
                    "\n      <error message=\"{message}\">{body}</error>"
                ));
            }
            TestOutcome::Skipped => {
                tc.push_str(&format!(
                    "\n      <skipped type=\"pytest.skip\" message=\"{message}\">{body}</skipped>"
                ));
            }
            TestOutcome::Xfailed => {
                tc.push_str(&format!(
                    "\n      <skipped type=\"pytest.xfail\" message=\"{message}\"/>"
                ));
            }
        }
        if !o.stdout.is_empty() {
            tc.push_str(&format!(
                "\n      <system-out>{}</system-out>",
                xml_escape(&o.stdout)
            ));
        }
        let err = [o.stderr.as_str(), o.log.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        if !err.is_empty() {
            tc.push_str(&format!(
                "\n      <system-err>{}</system-err>",
                xml_escape(&err)
            ));
        }
        tc.push_str("\n    </testcase>\n");
        w(out, &tc)
    })
    .await?;
    w(out, "  </testsuite>\n</testsuites>\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeids_split_into_classname_and_name_like_pytest() {
        assert_eq!(
            junit_names("tests/test_a.py::TestX::test_b[1]"),
            ("tests.test_a.TestX".to_string(), "test_b[1]".to_string())
        );
        assert_eq!(
            junit_names("test_mod.py::test_f"),
            ("test_mod".to_string(), "test_f".to_string())
        );
    }

    #[test]
    fn xml_escape_handles_markup_and_control_characters() {
        assert_eq!(
            xml_escape("a<b>&\"'\u{1b}"),
            "a&lt;b&gt;&amp;&quot;&apos;\\x1b"
        );
    }
}
