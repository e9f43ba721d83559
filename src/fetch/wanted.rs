//! What a build asks `fetch` for: `PKG[@HASH[,HASH...]]`, a package and the
//! hashes a tarball of it may have, best first (aliBuild's `remote_hashes`).

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::layout;

/// One package of the build and its candidate hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub package: String,
    /// Tried in order: the first one the store has a tarball of is fetched.
    /// Empty: the package's links only.
    pub hashes: Vec<String>,
}

impl FromStr for Wanted {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let (package, hashes) = match text.split_once('@') {
            Some((package, hashes)) => (package, hashes.split(',').collect()),
            None => (text, Vec::new()),
        };
        layout::check_package(package)?;
        for hash in &hashes {
            if hash.len() != 40 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(Error::input(format!(
                    "{text:?}: {hash:?} is not a package hash (40 lowercase hex characters); \
                     expected PKG or PKG@HASH[,HASH...]"
                )));
            }
        }
        Ok(Wanted {
            package: package.to_string(),
            hashes: hashes.into_iter().map(String::from).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_and_hashes_parse() {
        let (a, b) = ("a".repeat(40), "0b".repeat(20));
        // The text, and the package and hashes it names (`None`: refused).
        type Case<'a> = (String, Option<(&'a str, Vec<&'a str>)>);
        let cases: [Case; 9] = [
            ("zlib".into(), Some(("zlib", vec![]))),
            (format!("zlib@{a}"), Some(("zlib", vec![&a]))),
            (
                format!("Python-modules@{a},{b}"),
                Some(("Python-modules", vec![&a, &b])),
            ),
            (format!("zlib@{a},"), None),
            ("zlib@".into(), None),
            (format!("@{a}"), None),
            (format!("zlib@{}", a.to_uppercase()), None),
            (format!("../x@{a}"), None),
            (format!("zlib@{a}@{b}"), None),
        ];
        for (text, expected) in cases {
            let parsed = text.parse::<Wanted>().ok();
            let expected = expected.map(|(package, hashes)| Wanted {
                package: package.into(),
                hashes: hashes.into_iter().map(String::from).collect(),
            });
            assert_eq!(parsed, expected, "{text}");
        }
    }
}
