//! The project of a directory, named the way the plugin names the project
//! of a run: pytest's rootdir for that directory (found as pytest finds it
//! when run there with no arguments), then its `pyproject.toml` name, else
//! the rootdir's base name. The CLI and `stdio` read the project they are
//! started in from here, so `pytest --mcp` followed by `pytest-mcp show`
//! in the same directory talk about the same project.

use std::path::{Path, PathBuf};

/// pytest's configuration files, in the order it looks for them in each directory.
const CONFIG_FILES: [&str; 5] = [
    "pytest.ini",
    ".pytest.ini",
    "pyproject.toml",
    "tox.ini",
    "setup.cfg",
];

/// Largest configuration file read, in bytes; a larger one is taken as not
/// configuring pytest (pytest would read it, but these are never that big).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The project name the plugin records for a run started in `dir`.
pub fn project_of(dir: &Path) -> String {
    project_name(&rootdir(dir))
}

/// pytest's rootdir for a run started in `dir` with no arguments: the
/// first ancestor (from `dir` up) with a file that configures pytest; else
/// the nearest `pyproject.toml`'s directory; else the nearest `setup.py`'s;
/// else `dir` itself.
pub fn rootdir(dir: &Path) -> PathBuf {
    let mut first_pyproject: Option<PathBuf> = None;
    for base in dir.ancestors() {
        for name in CONFIG_FILES {
            let path = base.join(name);
            if !path.is_file() {
                continue;
            }
            if name == "pyproject.toml" && first_pyproject.is_none() {
                first_pyproject = Some(base.to_path_buf());
            }
            if configures_pytest(&path, name) {
                return base.to_path_buf();
            }
        }
    }
    if let Some(base) = first_pyproject {
        return base;
    }
    if let Some(base) = dir.ancestors().find(|b| b.join("setup.py").is_file()) {
        return base.to_path_buf();
    }
    dir.to_path_buf()
}

/// Whether a configuration file found by name configures pytest: an
/// `.ini` of pytest's own always does; the shared ones need pytest's section.
fn configures_pytest(path: &Path, name: &str) -> bool {
    if matches!(name, "pytest.ini" | ".pytest.ini") {
        return true;
    }
    let Some(text) = read_small(path) else {
        return false;
    };
    let section = match name {
        "pyproject.toml" => ["[tool.pytest.ini_options]", "[tool.pytest]"].as_slice(),
        "tox.ini" => ["[pytest]"].as_slice(),
        _ => ["[tool:pytest]"].as_slice(),
    };
    text.lines().any(|l| section.contains(&l.trim()))
}

fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_CONFIG_BYTES {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// `[project].name` (or `[tool.poetry].name`) of `root`'s `pyproject.toml`,
/// else `root`'s base name: what the plugin records as the project.
pub fn project_name(root: &Path) -> String {
    if let Some(text) = read_small(&root.join("pyproject.toml")) {
        let mut section = "";
        for line in text.lines() {
            let stripped = line.trim();
            if stripped.starts_with('[') {
                section = stripped;
                continue;
            }
            if (section == "[project]" || section == "[tool.poetry]")
                && let Some(name) = name_value(line)
            {
                return name;
            }
        }
    }
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The value of a `name = "..."` line (single or double quotes), as the
/// plugin's line scan reads it.
fn name_value(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix("name")?.trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let inner = rest.strip_prefix(['"', '\''])?;
    let end = inner.find(['"', '\''])?;
    (end > 0).then(|| inner[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_rootdir_is_the_nearest_directory_that_configures_pytest() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("shop");
        let deep = root.join("src").join("pkg");
        std::fs::create_dir_all(&deep).unwrap();
        // A pyproject.toml without pytest's section is only a fallback...
        write(
            &root.join("src/pyproject.toml"),
            "[project]\nname = \"inner\"\n",
        );
        write(
            &root.join("tox.ini"),
            "[tox]\nenvlist = py3\n[pytest]\naddopts = -q\n",
        );
        assert_eq!(rootdir(&deep), root);
        // ...and wins when nothing above configures pytest.
        std::fs::remove_file(root.join("tox.ini")).unwrap();
        assert_eq!(rootdir(&deep), root.join("src"));
        assert_eq!(project_of(&deep), "inner");
    }

    #[test]
    fn setup_py_then_the_directory_itself_are_the_last_resorts() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("legacy");
        let deep = root.join("tests");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(rootdir(&deep), deep);
        write(&root.join("setup.py"), "from setuptools import setup\n");
        assert_eq!(rootdir(&deep), root);
        assert_eq!(project_of(&deep), "legacy");
    }

    #[test]
    fn the_project_is_named_by_pyproject_as_the_plugin_names_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("checkout-dir");
        write(
            &root.join("pyproject.toml"),
            "[build-system]\nrequires = [\"x\"]\n[project]\nname = 'click'\nversion = \"8\"\n\
             [tool.pytest.ini_options]\ntestpaths = [\"tests\"]\n",
        );
        assert_eq!(rootdir(&root.join("tests")), root);
        assert_eq!(project_of(&root.join("tests")), "click");
        write(&root.join("pyproject.toml"), "[tool.pytest.ini_options]\n");
        assert_eq!(project_of(&root), "checkout-dir");
    }
}
