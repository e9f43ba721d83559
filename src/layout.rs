//! The aliBuild remote-store layout: validated names, and the keys and link
//! bodies of one package revision (see `docs/protocol.md`).
//!
//! Every key alitx writes or deletes is computed here, so that a key named by
//! an untrusted journal can be checked against the revision it claims.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The three directories of per-revision dependency links.
pub const DIST_DIRS: [&str; 3] = ["dist", "dist-direct", "dist-runtime"];

/// One package revision: what aliBuild calls a spec's (architecture,
/// package, version, revision, hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub architecture: String,
    pub package: String,
    pub version: String,
    pub revision: String,
    pub hash: String,
}

/// A symlink object: a key whose body names a store tarball.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub key: String,
    /// The S3 object body: the link target without its leading `../`.
    pub body: String,
    /// The relative symlink target, as aliBuild lays it out in `sw/`.
    pub symlink_target: String,
    /// Dist links also carry `x-amz-website-redirect-location` and a
    /// `public-read` ACL; package links carry neither.
    pub redirect: Option<String>,
}

impl Revision {
    /// Validate every name; the error says which one and why.
    pub fn new(
        architecture: &str,
        package: &str,
        version: &str,
        revision: &str,
        hash: &str,
    ) -> Result<Self> {
        check_name("architecture", architecture, "_.-")?;
        check_package(package)?;
        check_name("version", version, "_.+-")?;
        check_name("revision", revision, "_.")?;
        if hash.len() != 40
            || !hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(Error::input(format!(
                "invalid hash {hash:?}: expected the 40 lowercase hex characters of aliBuild's package hash"
            )));
        }
        Ok(Revision {
            architecture: architecture.into(),
            package: package.into(),
            version: version.into(),
            revision: revision.into(),
            hash: hash.into(),
        })
    }

    /// Re-validate a revision that came from untrusted input (a journal).
    pub fn validated(&self) -> Result<Self> {
        Revision::new(
            &self.architecture,
            &self.package,
            &self.version,
            &self.revision,
            &self.hash,
        )
    }

    /// `<pkg>-<ver>-<rev>`
    pub fn full_version(&self) -> String {
        format!("{}-{}-{}", self.package, self.version, self.revision)
    }

    /// `<pkg>-<ver>-<rev>.<arch>.tar.gz`
    pub fn tarball_name(&self) -> String {
        format!("{}.{}.tar.gz", self.full_version(), self.architecture)
    }

    /// `<arch>/<pkg>/<ver>-<rev>`: where every tarball entry must live.
    pub fn install_prefix(&self) -> String {
        format!(
            "{}/{}/{}-{}",
            self.architecture, self.package, self.version, self.revision
        )
    }

    /// `TARS/<arch>/store/<h2>/<hash>/<tarball>`
    pub fn store_key(&self) -> String {
        store_key(&self.architecture, &self.hash, &self.tarball_name())
    }

    /// `TARS/<arch>/<pkg>/`: the directory of taken revision numbers.
    pub fn package_dir(&self) -> String {
        format!("TARS/{}/{}/", self.architecture, self.package)
    }

    /// The package link: `TARS/<arch>/<pkg>/<tarball>` with body
    /// `<arch>/store/<h2>/<hash>/<tarball>`.
    pub fn package_link(&self) -> Link {
        let body = self.store_key()["TARS/".len()..].to_string();
        Link {
            key: format!("{}{}", self.package_dir(), self.tarball_name()),
            symlink_target: format!("../../{body}"),
            body,
            redirect: None,
        }
    }

    /// `TARS/<arch>/<distdir>/<pkg>/<pkg>-<ver>-<rev>/`
    pub fn dist_prefix(&self, dist_dir: &str) -> String {
        format!(
            "TARS/{}/{}/{}/{}/",
            self.architecture,
            dist_dir,
            self.package,
            self.full_version()
        )
    }

    /// The dist link in `dist_dir` to the store tarball `target_key`
    /// (`TARS/<arch>/store/<h2>/<hash>/<name>`), after checking that the
    /// target is a store tarball of this architecture.
    pub fn dist_link(&self, dist_dir: &str, target_key: &str) -> Result<Link> {
        let name = self.parse_store_key(target_key)?.2;
        Ok(Link {
            key: format!("{}{}", self.dist_prefix(dist_dir), name),
            symlink_target: format!("../../../../../{target_key}"),
            body: target_key.to_string(),
            redirect: Some(format!("/{target_key}")),
        })
    }

    /// Split `TARS/<arch>/store/<h2>/<hash>/<name>` into (h2, hash, name),
    /// rejecting anything that is not a store tarball of this architecture.
    pub fn parse_store_key<'a>(&self, key: &'a str) -> Result<(&'a str, &'a str, &'a str)> {
        parse_store_key(&self.architecture, key)
    }

    /// Whether `key` is one this revision may write or delete: its store
    /// tarball, its package link, or a link directly inside one of its dist
    /// directories.
    pub fn owns_key(&self, key: &str) -> bool {
        if key == self.store_key() || key == self.package_link().key {
            return true;
        }
        DIST_DIRS.iter().any(|dir| {
            key.strip_prefix(&self.dist_prefix(dir))
                .is_some_and(|name| tarball_full_version(&self.architecture, name).is_some())
        })
    }

    /// Whether `link` is exactly what this revision would write at its key.
    pub fn owns_link(&self, link: &Link) -> bool {
        if *link == self.package_link() {
            return true;
        }
        DIST_DIRS.iter().any(|dir| {
            link.key.starts_with(&self.dist_prefix(dir))
                && self
                    .dist_link(dir, &link.body)
                    .is_ok_and(|own| own == *link)
        })
    }
}

/// `TARS/<arch>/store/<h2>/<hash>/<name>`
pub fn store_key(architecture: &str, hash: &str, name: &str) -> String {
    format!("TARS/{architecture}/store/{}/{hash}/{name}", &hash[..2])
}

/// Split `TARS/<arch>/store/<h2>/<hash>/<name>` into (h2, hash, name),
/// rejecting anything that is not a store tarball of `architecture`.
pub fn parse_store_key<'a>(
    architecture: &str,
    key: &'a str,
) -> Result<(&'a str, &'a str, &'a str)> {
    let bad = || {
        Error::input(format!(
            "{key:?} is not a store tarball path: expected TARS/{architecture}/store/<2 hex>/<40 hex>/<name>.{architecture}.tar.gz"
        ))
    };
    let rest = key
        .strip_prefix(&format!("TARS/{architecture}/store/"))
        .ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [h2, hash, name] = parts[..] else {
        return Err(bad());
    };
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if hash.len() != 40
        || !is_hex(hash)
        || !hash.starts_with(h2)
        || h2.len() != 2
        || tarball_full_version(architecture, name).is_none()
    {
        return Err(bad());
    }
    Ok((h2, hash, name))
}

/// `<pkg>-<ver>-<rev>` of a tarball file name `<pkg>-<ver>-<rev>.<arch>.tar.gz`
/// made of allowed characters; `None` for any other name.
pub fn tarball_full_version<'a>(architecture: &str, name: &'a str) -> Option<&'a str> {
    let full = name.strip_suffix(&format!(".{architecture}.tar.gz"))?;
    (!full.is_empty() && check_name("tarball name", name, "_.+-").is_ok()).then_some(full)
}

/// The store key a link's body names, read as aliBuild's readers read it:
/// trailing line ends (`\n`, `\r\n`) are stripped; a package link's body
/// is relative to `TARS/` (`<arch>/store/...`, after one leading `../../`,
/// `./` or `/`, which the readers resolve to the same key), a dist link's
/// names the key itself (`TARS/<arch>/store/...`). `None` unless that is a
/// store tarball of `architecture`. The body is never followed, only
/// parsed.
pub fn link_target(architecture: &str, kind: LinkKind, body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body)
        .ok()?
        .trim_end_matches(['\r', '\n']);
    let key = match kind {
        LinkKind::Package => {
            let relative = ["../../", "./", "/"]
                .iter()
                .find_map(|prefix| body.strip_prefix(prefix))
                .unwrap_or(body);
            format!("TARS/{relative}")
        }
        LinkKind::Dist => body.to_string(),
    };
    parse_store_key(architecture, &key).is_ok().then_some(key)
}

/// The key a store object's `x-amz-website-redirect-location` names, read
/// as aliBuild's fetch follows it: a `TARS/` key of the same store (one
/// leading `/` allowed), never one with a `..` component; `None` otherwise.
pub fn redirect_key(redirect: &str) -> Option<&str> {
    let key = redirect.strip_prefix('/').unwrap_or(redirect);
    (key.starts_with("TARS/") && !key.split('/').any(|c| c == "..")).then_some(key)
}

/// Check a package name as aliBuild writes it (see [`Revision::new`]).
pub fn check_package(package: &str) -> Result<()> {
    check_name("package", package, "_.+-")
}

/// The two kinds of link object, whose bodies are read differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// `TARS/<arch>/<pkg>/<tarball>`
    Package,
    /// `TARS/<arch>/<dist dir>/<pkg>/<pkg>-<ver>-<rev>/<tarball>`
    Dist,
}

/// `(<ver>, <rev>)` of `<pkg>-<ver>-<rev>` (`full`) for the package
/// `package`: a revision has no `-`, a version may.
pub fn split_full_version<'a>(package: &str, full: &'a str) -> Option<(&'a str, &'a str)> {
    full.strip_prefix(package)?
        .strip_prefix('-')?
        .rsplit_once('-')
}

/// The error for an `--architecture` the store does not hold, naming those
/// it does.
pub fn unknown_architecture(architecture: &str, store: &str, present: &[String]) -> Error {
    Error::input(format!(
        "unknown architecture {architecture:?}: {store} holds {}; pass one of those to --architecture, or none",
        if present.is_empty() {
            "no architectures (no TARS/<arch>/ at all)".to_string()
        } else {
            present.join(", ")
        }
    ))
}

/// Names are one path component of letters, digits and a few punctuation
/// characters; never empty, `.`/`..`, hidden, or containing `/` or spaces.
fn check_name(what: &str, value: &str, punctuation: &str) -> Result<()> {
    let bad_char = value
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !punctuation.contains(*c));
    let why = if value.is_empty() {
        Some("it is empty".to_string())
    } else if value.len() > 200 {
        Some("it is longer than 200 characters".to_string())
    } else if value.starts_with('.') || value.starts_with('-') {
        Some("it starts with '.' or '-'".to_string())
    } else {
        bad_char.map(|c| format!("{c:?} is not allowed (letters, digits and {punctuation:?} only)"))
    };
    match why {
        Some(why) => Err(Error::input(format!("invalid {what} {value:?}: {why}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5b82364561d097dcbef08ccc08bb1f4cf4de725c";

    fn zlibx() -> Revision {
        Revision::new("slc9_x86-64", "zlibx", "v1.0", "1", HASH).unwrap()
    }

    #[test]
    fn keys_and_bodies_match_the_reference() {
        let r = zlibx();
        assert_eq!(
            r.store_key(),
            "TARS/slc9_x86-64/store/5b/5b82364561d097dcbef08ccc08bb1f4cf4de725c/zlibx-v1.0-1.slc9_x86-64.tar.gz"
        );
        let link = r.package_link();
        assert_eq!(
            link.key,
            "TARS/slc9_x86-64/zlibx/zlibx-v1.0-1.slc9_x86-64.tar.gz"
        );
        assert_eq!(
            link.body,
            "slc9_x86-64/store/5b/5b82364561d097dcbef08ccc08bb1f4cf4de725c/zlibx-v1.0-1.slc9_x86-64.tar.gz"
        );
        assert_eq!(link.symlink_target, format!("../../{}", link.body));
        let dist = r.dist_link("dist-runtime", &r.store_key()).unwrap();
        assert_eq!(
            dist.key,
            "TARS/slc9_x86-64/dist-runtime/zlibx/zlibx-v1.0-1/zlibx-v1.0-1.slc9_x86-64.tar.gz"
        );
        assert_eq!(dist.body, r.store_key());
        assert_eq!(
            dist.redirect.as_deref(),
            Some(&*format!("/{}", r.store_key()))
        );
        assert_eq!(
            dist.symlink_target,
            format!("../../../../../{}", r.store_key())
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for (arch, pkg, ver, rev, hash) in [
            ("", "p", "v", "1", HASH),
            ("../x", "p", "v", "1", HASH),
            ("a", "p q", "v", "1", HASH),
            ("a", "p", "v/../..", "1", HASH),
            ("a", "p", "v", "1-2", HASH),
            ("a", "p", "v", "1", "abc"),
            ("a", "p", "v", "1", &HASH.to_uppercase()),
            ("a", ".hidden", "v", "1", HASH),
        ] {
            assert!(
                Revision::new(arch, pkg, ver, rev, hash).is_err(),
                "{arch} {pkg} {ver} {rev} {hash}"
            );
        }
    }

    #[test]
    fn ownership_is_limited_to_the_revision_paths() {
        let r = zlibx();
        assert!(r.owns_key(&r.store_key()));
        assert!(r.owns_key(&r.package_link().key));
        assert!(r.owns_key("TARS/slc9_x86-64/dist/zlibx/zlibx-v1.0-1/dep-1-1.slc9_x86-64.tar.gz"));
        for foreign in [
            "TARS/slc9_x86-64/zlibx/zlibx-v1.0-2.slc9_x86-64.tar.gz",
            "TARS/slc9_x86-64/dist/zlibx/zlibx-v1.0-1/../../other/x.slc9_x86-64.tar.gz",
            "TARS/slc9_x86-64/dist/zlibx/zlibx-v1.0-1/sub/x.slc9_x86-64.tar.gz",
            "TARS/slc9_x86-64/dist/zlibx/zlibx-v1.0-10/x.slc9_x86-64.tar.gz",
            "TARS/slc9_x86-64/store/00/00478b69c97749a97825f79cba216c885a7fffbd/midx-v2.0-1.slc9_x86-64.tar.gz",
        ] {
            assert!(!r.owns_key(foreign), "{foreign}");
        }
    }

    #[test]
    fn dist_targets_must_be_store_tarballs() {
        let r = zlibx();
        for bad in [
            "TARS/slc9_x86-64/zlibx/zlibx-v1.0-1.slc9_x86-64.tar.gz",
            "TARS/other/store/5b/5b82364561d097dcbef08ccc08bb1f4cf4de725c/x.other.tar.gz",
            "TARS/slc9_x86-64/store/aa/5b82364561d097dcbef08ccc08bb1f4cf4de725c/x.slc9_x86-64.tar.gz",
            "TARS/slc9_x86-64/store/5b/5b82364561d097dcbef08ccc08bb1f4cf4de725c/../x.slc9_x86-64.tar.gz",
        ] {
            assert!(r.dist_link("dist", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn link_bodies_read_as_alibuild_reads_them() {
        let r = zlibx();
        let key = r.store_key();
        let body = r.package_link().body;
        let package = |b: &str| link_target(&r.architecture, LinkKind::Package, b.as_bytes());
        for good in [
            body.clone(),
            format!("{body}\n"),
            format!("{body}\r\n"),
            format!("../../{body}"),
            format!("../../{body}\n"),
            format!("./{body}"),
            format!("./{body}\r\n"),
            format!("/{body}"),
            format!("/{body}\n"),
        ] {
            assert_eq!(package(&good), Some(key.clone()), "{good:?}");
        }
        for bad in [
            format!("../{body}"),
            format!("../../../../{body}"),
            format!("//{body}"),
            format!(".//{body}"),
            format!("./../../{body}"),
            format!("{body}\r\nx"),
            format!(" {body}"),
            key.clone(),
            "../../../etc/passwd".to_string(),
            String::new(),
        ] {
            assert_eq!(package(&bad), None, "{bad:?}");
        }
        assert_eq!(
            link_target(&r.architecture, LinkKind::Package, &[0xff]),
            None
        );
        let dist = |b: &str| link_target(&r.architecture, LinkKind::Dist, b.as_bytes());
        assert_eq!(dist(&key), Some(key.clone()));
        assert_eq!(dist(&format!("{key}\n")), Some(key.clone()));
        assert_eq!(dist(&format!("{key}\r\n")), Some(key.clone()));
        assert_eq!(dist(&body), None);
        assert_eq!(
            split_full_version("Python-modules", "Python-modules-v1-2-3"),
            Some(("v1-2", "3"))
        );
        assert_eq!(split_full_version("Python", "Pythonx-v1-1"), None);
        assert_eq!(split_full_version("zlib", "zlib-v1"), None);
    }
}
