//! How many connections a one-shot command opens to the store (issue 28):
//! at most `FEW_CONNECTIONS`, each carrying request after request, however
//! many requests it has in flight, counted at the proxy of
//! `tests/common/proxy.rs` on the real RGW.

use crate::common::proxy::{Faults, Proxy};
use crate::common::*;
use alitx::storage::FEW_CONNECTIONS;

#[test]
fn a_one_shot_upload_sends_its_links_through_few_kept_alive_connections() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let wd = WorkDir::chain(1, 1 << 20);
    // 150 links, written 64 at a time (`--link-concurrency`).
    wd.add_dist_links(0, 50);
    let proxy = Proxy::start(Faults::default());
    let mut upload = wd.upload_args(0, &store);
    upload.extend(args(&["--json", "--endpoint-url", &proxy.url()]));
    let out = alitx(&upload);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["status"], "committed");
    let counts = proxy.counts();
    assert!(counts.requests > 150, "{counts}");
    assert!(
        counts.connections <= FEW_CONNECTIONS as u64,
        "at most {FEW_CONNECTIONS} connections: {counts}"
    );
}
