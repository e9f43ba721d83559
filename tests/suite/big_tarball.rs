//! A 1 GiB tarball uploads with bounded memory. Kept in its own test binary:
//! the peak RSS of waited-for children (`RUSAGE_CHILDREN`) is then alitx's.

use crate::common::*;

const LIMIT_MIB: i64 = 200;

fn peak_child_rss_mib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid out-pointer.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss / 1024
}

#[test]
fn a_one_gib_tarball_uploads_with_bounded_memory() {
    let rt = runtime();
    let wd = WorkDir::chain(1, 1 << 30);
    let size = std::fs::metadata(wd.tarball_path(0)).unwrap().len();
    assert!(size > 1 << 30);
    for kind in backends() {
        let store = rt.block_on(TestStore::new(kind));
        let mut upload = wd.upload_args(0, &store);
        upload.push("--json".into());
        let out = alitx(&upload);
        assert_exit(&out, 0);
        let report = json(&out);
        assert_eq!(report["bytes_sent"].as_u64(), Some(size));
        let peak = peak_child_rss_mib();
        eprintln!(
            "{kind}: {size} B in {:.1}s, peak RSS so far {peak} MiB",
            report["duration_seconds"].as_f64().unwrap()
        );
        assert!(peak < LIMIT_MIB, "{kind}: peak RSS {peak} MiB");
        rt.block_on(async {
            let backend = store.open().await;
            let info = backend
                .head(&wd.pkgs[0].revision().store_key())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(info.size, size);
        });
        let expected_sha = alitx::tarball::sha256_of(&wd.tarball_path(0)).unwrap();
        assert_eq!(report["tarball_sha256"], expected_sha.as_str());
    }
}
