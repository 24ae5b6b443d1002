//! Error numbers, as Linux returns them.

use std::fmt;
use std::str::FromStr;

macro_rules! errnos {
    ($($name:ident = $num:expr, $text:expr;)*) => {
        /// A Linux errno value that a step can fail with.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Errno {
            $(#[doc = $text] $name,)*
        }

        impl Errno {
            /// Every errno the spec knows, in numeric order.
            pub const ALL: &'static [Errno] = &[$(Errno::$name,)*];

            /// The symbolic name, e.g. `"ENOENT"`.
            pub fn name(self) -> &'static str {
                match self { $(Errno::$name => stringify!($name),)* }
            }

            /// The number Linux (x86_64) uses.
            pub fn number(self) -> i32 {
                match self { $(Errno::$name => $num,)* }
            }

            /// The errno with this number, if the spec knows it.
            pub fn from_number(n: i32) -> Option<Errno> {
                match n { $($num => Some(Errno::$name),)* _ => None }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted (e.g. hard link of a directory).";
    ENOENT = 2, "No such file or directory.";
    EIO = 5, "Input/output error.";
    E2BIG = 7, "Argument list too long (xattr value too large).";
    EACCES = 13, "Permission denied.";
    EBUSY = 16, "Device or resource busy.";
    EEXIST = 17, "File exists.";
    EXDEV = 18, "Invalid cross-device link (overlayfs directory rename).";
    ENOTDIR = 20, "Not a directory.";
    EISDIR = 21, "Is a directory.";
    EINVAL = 22, "Invalid argument (rename of a directory into its own subtree).";
    EFBIG = 27, "File too large.";
    ENOSPC = 28, "No space left on device.";
    EMLINK = 31, "Too many links.";
    ERANGE = 34, "Result too large (xattr name too long).";
    ENAMETOOLONG = 36, "File name too long.";
    ENOTEMPTY = 39, "Directory not empty.";
    ELOOP = 40, "Too many levels of symbolic links.";
    ENODATA = 61, "No data available (missing xattr).";
    EOPNOTSUPP = 95, "Operation not supported.";
    ESTALE = 116, "Stale file handle (overlayfs: the layers changed under the mount).";
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The text was not the name of an errno the spec knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownErrno(pub String);

impl fmt::Display for UnknownErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown errno name `{}` (expected one of ", self.0)?;
        for (i, e) in Errno::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(e.name())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for UnknownErrno {}

impl FromStr for Errno {
    type Err = UnknownErrno;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s2 = if s == "ENOTSUP" { "EOPNOTSUPP" } else { s };
        Errno::ALL
            .iter()
            .copied()
            .find(|e| e.name() == s2)
            .ok_or_else(|| UnknownErrno(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_numbers_are_linux_x86_64() {
        for e in Errno::ALL {
            assert_eq!(e.name().parse::<Errno>().unwrap(), *e);
            assert_eq!(Errno::from_number(e.number()), Some(*e));
        }
        assert_eq!(Errno::EXDEV.number(), 18);
        assert_eq!(Errno::ELOOP.number(), 40);
        assert!("EBOGUS".parse::<Errno>().is_err());
    }
}
