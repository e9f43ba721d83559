//! A package's links, laid out in the work dir as aliBuild's `b3://` fetch
//! lays them: `TARS/<arch>/<pkg>/<name>` → `../../<arch>/store/...` for
//! every line of `TARS/<arch>/<pkg>.manifest` and every link listed under
//! `TARS/<arch>/<pkg>/` that the manifest lacks (read one by one). The
//! directory's other symlinks go, as aliBuild removes them before it fetches.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tracing::warn;

use super::Fetcher;
use crate::error::{Error, Result};

/// Link name → symlink target, as raw bytes (aliBuild writes them as the
/// store holds them).
pub(super) type Links = BTreeMap<Vec<u8>, Vec<u8>>;

impl Fetcher {
    /// Fetch and lay out the links of `package` (its requests served at
    /// `priority`); how many there are.
    pub(super) async fn fetch_links(&self, priority: u64, package: &str) -> Result<usize> {
        let dir = format!("TARS/{}/{package}/", self.architecture);
        let manifest_key = format!("TARS/{}/{package}.manifest", self.architecture);
        let (manifest, listing) = tokio::join!(
            self.request(priority, self.store.get(&manifest_key)),
            self.request(priority, self.store.list_dir(&dir, false))
        );
        let mut links = manifest?.map_or_else(Links::new, |body| parse_manifest(&body));
        let leftovers: Vec<String> = listing?
            .objects
            .iter()
            .filter_map(|o| o.key.strip_prefix(&dir))
            .filter(|name| !links.contains_key(name.as_bytes()))
            .map(String::from)
            .collect();
        let bodies = futures::future::try_join_all(leftovers.iter().map(|name| {
            let key = format!("{dir}{name}");
            async move { self.request(priority, self.store.get(&key)).await }
        }))
        .await?;
        for (name, body) in leftovers.iter().zip(bodies) {
            // One deleted since the listing is no link any more.
            if let Some(body) = body {
                links.insert(name.as_bytes().to_vec(), symlink_target(&body));
            }
        }
        let count = links.len();
        let path = self.work_dir.join(&dir);
        tokio::task::spawn_blocking(move || place(&path, &links))
            .await
            .map_err(|e| Error::io("laying out links", std::io::Error::other(e)))??;
        Ok(count)
    }
}

/// The links a manifest lists: one `<name>\t<target>` per line; a line
/// without a tab is ignored, as aliBuild ignores it, and so is one whose
/// name is not a plain file name (aliBuild would write it elsewhere).
pub(super) fn parse_manifest(body: &[u8]) -> Links {
    let mut links = Links::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(tab) = line.iter().position(|&b| b == b'\t') else {
            continue;
        };
        let (name, target) = (&line[..tab], &line[tab + 1..]);
        if !plain_name(name) || target.contains(&0) {
            warn!(
                "ignoring manifest line {:?}: not a link name and target",
                String::from_utf8_lossy(line)
            );
            continue;
        }
        links.insert(name.to_vec(), symlink_target(target));
    }
    links
}

/// A link's body as a symlink target: trailing newlines dropped, `../../`
/// prepended unless it is there, as aliBuild does.
pub(super) fn symlink_target(body: &[u8]) -> Vec<u8> {
    let mut body = body;
    while let Some(rest) = body.strip_suffix(b"\n") {
        body = rest;
    }
    match body.starts_with(b"../../") {
        true => body.to_vec(),
        false => [b"../../", body].concat(),
    }
}

fn plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Make `dir`'s symlinks exactly `links`: each one replaced atomically
/// (a symlink beside it renamed over it), the others removed.
fn place(dir: &Path, links: &Links) -> Result<()> {
    let io = |what: &Path, e| Error::io(what.display(), e);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, target) in links {
        let path = dir.join(OsStr::from_bytes(name));
        let target = OsStr::from_bytes(target);
        if std::fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target) {
            continue;
        }
        let beside = dir.join(OsStr::from_bytes(
            &[b".", &name[..], b".alitx-link"].concat(),
        ));
        let _ = std::fs::remove_file(&beside);
        std::os::unix::fs::symlink(target, &beside).map_err(|e| io(&beside, e))?;
        std::fs::rename(&beside, &path).map_err(|e| io(&path, e))?;
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let stale = entry.file_type().is_ok_and(|t| t.is_symlink())
            && !links.contains_key(entry.file_name().as_bytes());
        if stale {
            std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_read_as_alibuild_reads_them() {
        let body = b"a.tar.gz\tarch/store/aa/aaaa/a.tar.gz\n\
            b.tar.gz\t../../arch/store/bb/bbbb/b.tar.gz\r\n\
            no tab here\n\
            \n\
            ../up.tar.gz\tarch/store/x\n\
            a.tar.gz\tarch/store/cc/cccc/a.tar.gz";
        let links = parse_manifest(body);
        let expected: Links = [
            (&b"a.tar.gz"[..], &b"../../arch/store/cc/cccc/a.tar.gz"[..]),
            (b"b.tar.gz", b"../../arch/store/bb/bbbb/b.tar.gz"),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_vec(), t.to_vec()))
        .collect();
        assert_eq!(links, expected);
        assert_eq!(symlink_target(b"x/y\n\n"), b"../../x/y");
        assert_eq!(symlink_target(b"../../x/y"), b"../../x/y");
    }

    #[test]
    fn placing_replaces_the_directory_links() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("../../old", dir.path().join("gone.tar.gz")).unwrap();
        std::os::unix::fs::symlink("../../old", dir.path().join("kept.tar.gz")).unwrap();
        std::fs::write(dir.path().join("file"), b"not a link").unwrap();
        let links: Links = [(b"kept.tar.gz".to_vec(), b"../../new".to_vec())].into();
        place(dir.path(), &links).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["file", "kept.tar.gz"]);
        let target = std::fs::read_link(dir.path().join("kept.tar.gz")).unwrap();
        assert_eq!(target.as_os_str(), "../../new");
    }
}
