//! Paths inside a container: absolute, `/`-separated, checked against Linux's limits.

use crate::errno::Errno;

/// Longest file name (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest path including its terminating NUL (`PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// Most symlinks followed while resolving one path (`MAXSYMLINKS`).
pub const MAX_SYMLINKS: u32 = 40;

/// The non-empty components of `path` (`.` is kept; the resolver treats it).
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// `dir/name`, with `dir` absolute.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent of an absolute canonical path (`/` for `/`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Whether canonical path `inner` lies strictly below `outer`.
pub fn is_below(inner: &str, outer: &str) -> bool {
    if outer == "/" {
        return inner != "/";
    }
    inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/'
}

/// The checks the kernel's path walk makes before looking anything up: the whole string
/// against `PATH_MAX`, each component against `NAME_MAX`.
pub fn check_limits(path: &str) -> Result<(), Errno> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if components(path).any(|c| c.len() > NAME_MAX) {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

/// Why a path in a scenario file is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadPath {
    /// Does not start with `/`.
    NotAbsolute,
    /// Has a `..` component (scenario paths name places inside the container directly).
    DotDot,
    /// Has a `.` component (`/a/./b`, `/.`): scenario paths are canonical.
    Dot,
    /// Has an empty component (`/a//b`): scenario paths are canonical.
    Empty,
    /// Has a NUL byte.
    Nul,
}

impl std::fmt::Display for BadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadPath::NotAbsolute => "path must be absolute (start with `/`)",
            BadPath::DotDot => "path must not contain `..` (only symlink targets may)",
            BadPath::Dot => "path must not contain `.` components (write it canonically)",
            BadPath::Empty => "path must not contain empty components (`//`: write it canonically)",
            BadPath::Nul => "path must not contain a NUL byte",
        })
    }
}

/// Validates a path written in a scenario (a step's or an entry's path, not a symlink target).
pub fn validate_scenario_path(path: &str) -> Result<(), BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if path.contains('\0') {
        return Err(BadPath::Nul);
    }
    if components(path).any(|c| c == "..") {
        return Err(BadPath::DotDot);
    }
    if components(path).any(|c| c == ".") {
        return Err(BadPath::Dot);
    }
    // A trailing `/` is meaningful (the last name must be a directory); `//` is not.
    if path.trim_end_matches('/').contains("//") {
        return Err(BadPath::Empty);
    }
    Ok(())
}

/// Longest layer or container id.
pub const ID_MAX: usize = 64;

/// Why an id (of a layer or a container) is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadId(pub String);

impl std::fmt::Display for BadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "id `{}` must be 1-{ID_MAX} characters of A-Z a-z 0-9 - _ . not starting with `.` \
             (an id names a directory, never a path)",
            self.0.escape_debug()
        )
    }
}

impl std::error::Error for BadId {}

/// Checks that `id` is a name: 1 to [`ID_MAX`] characters of `A-Z a-z 0-9 - _ .`, not
/// starting with `.` (so never `.`, `..` or a hidden name). Every layer and container id
/// passes here before it becomes a path component, on the model and on every real driver.
///
/// ```
/// use layerspec_model::check_id;
/// assert!(check_id("base-1.0_x").is_ok());
/// assert!(check_id("../x").is_err());
/// assert!(check_id("a/b").is_err());
/// assert!(check_id("..").is_err());
/// ```
pub fn check_id(id: &str) -> Result<(), BadId> {
    let ok = !id.is_empty()
        && id.len() <= ID_MAX
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(BadId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_linux() {
        assert_eq!(check_limits(&format!("/{}", "a".repeat(255))), Ok(()));
        assert_eq!(
            check_limits(&format!("/{}", "a".repeat(256))),
            Err(Errno::ENAMETOOLONG)
        );
        let long = "/a".repeat(2048);
        assert_eq!(long.len(), 4096);
        assert_eq!(check_limits(&long), Err(Errno::ENAMETOOLONG));
        assert_eq!(check_limits(&long[..4095]), Ok(()));
        assert_eq!(check_limits(""), Err(Errno::ENOENT));
    }

    #[test]
    fn below_and_parent() {
        assert!(is_below("/a/b", "/a"));
        assert!(!is_below("/ab", "/a"));
        assert!(!is_below("/a", "/a"));
        assert!(is_below("/a", "/"));
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(validate_scenario_path("/a/../b"), Err(BadPath::DotDot));
        assert_eq!(validate_scenario_path("a"), Err(BadPath::NotAbsolute));
    }
}
