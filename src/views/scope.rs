//! Which project a read is about. Every read names one project or takes
//! its reader's default: the project of the directory the CLI or `stdio`
//! runs in ([`crate::rootdir`]), or for `serve` and its pages the most
//! recently active one. Names match case-insensitively; a project asked for
//! by name that no session has is an error listing the ones there are.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Project, Session, SessionRef, UNNAMED_PROJECT};
use crate::store::{ProjectSummary, Store};

/// Projects named in an error that lists them.
const PROJECTS_NAMED: usize = 20;

/// Which project a reader's reads are about when they name none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultProject {
    /// The project of a directory (the CLI, `stdio`): its name as the
    /// plugin records it, and the directory it was found from.
    Directory {
        /// The project's name.
        name: String,
        /// The directory it is the project of.
        dir: PathBuf,
    },
    /// A project named by the operator (`--project`).
    Named(String),
    /// The most recently active project (`serve`, the pages).
    MostRecent,
}

impl DefaultProject {
    /// The project of `dir`, found the way pytest finds its rootdir.
    pub fn of_directory(dir: &Path) -> Self {
        DefaultProject::Directory {
            name: crate::rootdir::project_of(dir),
            dir: dir.to_path_buf(),
        }
    }

    /// The project of the current directory; the most recently active one
    /// when the current directory cannot be read or is no project's (its
    /// rootdir would be the file system's root or the home directory, as
    /// when a desktop client starts `stdio` there).
    pub fn of_current_directory() -> Self {
        let Ok(dir) = std::env::current_dir() else {
            return DefaultProject::MostRecent;
        };
        let root = crate::rootdir::rootdir(&dir);
        let home = dirs::home_dir();
        if root.parent().is_none() || home.as_deref() == Some(root.as_path()) {
            return DefaultProject::MostRecent;
        }
        DefaultProject::Directory {
            name: crate::rootdir::project_name(&root),
            dir,
        }
    }
}

/// How a read's project was chosen, for what it says when it finds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    /// Named by the reader.
    Named,
    /// The project of this directory.
    Directory(PathBuf),
    /// The most recently active project.
    MostRecent,
}

/// The project a read is about, and every project there is.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The project.
    pub project: Project,
    /// How it was chosen.
    pub chosen: Chosen,
    /// Every project with sessions, the most recently active first.
    pub known: Vec<ProjectSummary>,
}

impl Scope {
    /// The project named by `given` (case-insensitively; an unknown name is
    /// an error naming `project` and listing the projects there are), or
    /// the default when `given` is absent or empty.
    pub async fn resolve(
        store: &Store,
        given: Option<&str>,
        default: &DefaultProject,
    ) -> Result<Scope> {
        let known = store.projects().await?;
        let find = |name: &str| {
            // Sessions recorded without a project are named as they are shown.
            let key = match name {
                UNNAMED_PROJECT => String::new(),
                _ => name.to_lowercase(),
            };
            known
                .iter()
                .find(|p| p.project.name.to_lowercase() == key)
                .map(|p| p.project.clone())
        };
        if let Some(name) = given.map(str::trim).filter(|n| !n.is_empty()) {
            let Some(project) = find(name) else {
                return Err(Error::not_found(
                    "project",
                    format!(
                        "no session of a project named {name:?} is recorded; {}",
                        list(&known)
                    ),
                ));
            };
            return Ok(Scope {
                project,
                chosen: Chosen::Named,
                known,
            });
        }
        let (project, chosen) = match default {
            DefaultProject::Directory { name, dir } => (
                find(name).unwrap_or_else(|| Project::named(name.clone())),
                Chosen::Directory(dir.clone()),
            ),
            DefaultProject::Named(name) => (
                find(name).unwrap_or_else(|| Project::named(name.clone())),
                Chosen::Named,
            ),
            DefaultProject::MostRecent => (
                known
                    .first()
                    .map(|p| p.project.clone())
                    .unwrap_or_else(|| Project {
                        name: String::new(),
                        spellings: Vec::new(),
                    }),
                Chosen::MostRecent,
            ),
        };
        Ok(Scope {
            project,
            chosen,
            known,
        })
    }

    /// A scope of one project known to the caller, for tests and for
    /// readers that already hold a session of it.
    pub fn of(project: Project) -> Scope {
        Scope {
            project,
            chosen: Chosen::Named,
            known: Vec::new(),
        }
    }

    /// The project `s` belongs to: this scope's when it is of it, else its
    /// own (a session named by id may be of another project), with every
    /// spelling known.
    pub fn project_of(&self, s: &Session) -> Project {
        self.project_named(&s.environment.project)
    }

    /// The project a session recorded as `name` belongs to (see [`Scope::project_of`]).
    pub fn project_named(&self, name: &str) -> Project {
        if self.project.holds(name) {
            return self.project.clone();
        }
        let key = name.to_lowercase();
        self.known
            .iter()
            .find(|p| p.project.name.to_lowercase() == key)
            .map(|p| p.project.clone())
            .unwrap_or_else(|| Project::named(name))
    }

    /// Parses a session argument (`latest` when absent), `latest` meaning
    /// the newest session of this project.
    pub fn session(&self, text: Option<&str>, field: &str) -> Result<SessionRef> {
        let session = match text.map(str::trim).filter(|t| !t.is_empty()) {
            None => SessionRef::Latest(None),
            Some(t) => SessionRef::parse(t, field)?,
        };
        Ok(session.scoped(&self.project))
    }

    /// Says more of a "not found" for `latest`: which project it looked in,
    /// why that one, and which projects there are.
    pub fn explain(&self, e: Error) -> Error {
        match e {
            Error::NotFound { field, message } if message.starts_with("no session of project") => {
                let why = match &self.chosen {
                    Chosen::Named => String::new(),
                    Chosen::Directory(dir) => format!(
                        " (the project of {}, as pytest finds its rootdir; pass `project` for another)",
                        dir.display()
                    ),
                    Chosen::MostRecent => String::new(),
                };
                let message = if self.known.is_empty() {
                    "no sessions are recorded yet".to_string()
                } else {
                    format!("{message}{why}; {}", list(&self.known))
                };
                Error::NotFound { field, message }
            }
            other => other,
        }
    }

    /// The projects there are, as a view.
    pub fn projects_view(&self) -> ProjectsView {
        ProjectsView {
            current: self.project.name.clone(),
            projects: self
                .known
                .iter()
                .map(|p| ProjectView {
                    name: p.project.name.clone(),
                    spellings: p.project.spellings.clone(),
                    sessions: p.sessions,
                    last_started: p.last_started.to_rfc3339(),
                })
                .collect(),
            truncated: false,
        }
    }
}

/// "the projects are: a (12 sessions), b (1 session)".
fn list(known: &[ProjectSummary]) -> String {
    if known.is_empty() {
        return "no sessions are recorded yet".into();
    }
    let mut out = "the projects are: ".to_string();
    for (i, p) in known.iter().take(PROJECTS_NAMED).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{} ({})",
            p.project,
            super::count(p.sessions, "session", "sessions")
        );
    }
    if known.len() > PROJECTS_NAMED {
        let _ = write!(out, " and {} more", known.len() - PROJECTS_NAMED);
    }
    out
}

/// One project.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProjectView {
    /// Its name (the spelling of its newest session; "" for sessions
    /// recorded without a project).
    pub name: String,
    /// Every spelling of the name its sessions were recorded under.
    pub spellings: Vec<String>,
    /// Sessions recorded.
    pub sessions: u64,
    /// Start of its newest session, RFC 3339.
    pub last_started: String,
}

/// Answer of `list_projects`: every project, the most recently active first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProjectsView {
    /// The project reads default to here.
    pub current: String,
    /// The projects.
    pub projects: Vec<ProjectView>,
    /// Whether projects were left off (the least recently active) to stay
    /// within the size budget.
    pub truncated: bool,
}

impl ProjectsView {
    /// Cut to the answer budget (an MCP answer, the CLI); a page lists all.
    pub fn fitted(mut self) -> Self {
        if super::fit_budget(&mut self, |v| &mut v.projects) > 0 {
            self.truncated = true;
        }
        self
    }

    /// Text rendering.
    pub fn render(&self) -> String {
        if self.projects.is_empty() {
            return "no sessions are recorded yet".into();
        }
        let mut out = String::new();
        for p in &self.projects {
            let _ = writeln!(
                out,
                "{}{} ({}, newest {})",
                if p.name == self.current { "* " } else { "  " },
                if p.name.is_empty() {
                    UNNAMED_PROJECT
                } else {
                    &p.name
                },
                super::count(p.sessions, "session", "sessions"),
                p.last_started
            );
        }
        if self.truncated {
            out.push_str("… and more, less recently active");
        } else {
            out.pop();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Environment, Source, Timestamp};
    use crate::store::StoreConfig;

    #[tokio::test]
    async fn projects_match_case_insensitively_and_an_unknown_one_lists_the_others()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(StoreConfig::new(dir.path().join("s.db"))).await?;
        for (i, project) in ["Shop", "shop", "blog"].iter().enumerate() {
            let env = Environment {
                project: project.to_string(),
                ..Environment::default()
            };
            store
                .start_session(
                    uuid::Uuid::new_v4(),
                    Source::Plugin,
                    env,
                    Some(Timestamp(i as i64)),
                )
                .await?;
        }
        let scope = Scope::resolve(&store, Some("SHOP"), &DefaultProject::MostRecent).await?;
        assert_eq!(scope.project.name, "shop");
        let mut spellings = scope.project.spellings.clone();
        spellings.sort();
        assert_eq!(spellings, ["Shop", "shop"]);
        let latest = Scope::resolve(&store, None, &DefaultProject::MostRecent).await?;
        assert_eq!(latest.project.name, "blog");
        let e = Scope::resolve(&store, Some("nope"), &DefaultProject::MostRecent)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("project"), "{e}");
        assert!(
            e.contains("blog (1 session)") && e.contains("shop (2 sessions)"),
            "{e}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_thousand_projects_are_listed_within_the_budget_and_say_so() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(StoreConfig::new(dir.path().join("p.db"))).await?;
        for i in 0..1000 {
            let env = Environment {
                project: format!("{i:04}-{}", "x".repeat(240)),
                ..Environment::default()
            };
            store
                .start_session(
                    uuid::Uuid::new_v4(),
                    Source::Plugin,
                    env,
                    Some(Timestamp(i)),
                )
                .await?;
        }
        let scope = Scope::resolve(&store, None, &DefaultProject::MostRecent).await?;
        // The error naming them lists twenty.
        let e = Scope::resolve(&store, Some("nope"), &DefaultProject::MostRecent)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.len() < 8 * 1024 && e.contains("and 980 more"),
            "{} bytes",
            e.len()
        );
        let view = scope.projects_view().fitted();
        assert!(view.truncated);
        assert!(super::super::json_len(&view) <= super::super::BUDGET_BYTES);
        assert!(view.render().len() <= super::super::BUDGET_BYTES + 100);
        // The most recently active come first.
        assert!(view.projects[0].name.starts_with("0999-"));
        Ok(())
    }
}
