//! Test-only crash injection. When the environment variable
//! `ALITX_FAILPOINT` names a point the upload passes (e.g. `after-claim`;
//! `bulk-part-3` as part 3 is read; `part-sent-3` once it is stored), the
//! process kills itself with SIGKILL there, exactly as a killed Jenkins job
//! would die. The local-directory store adds `local-placing <key>` (an
//! object prepared under its temporary name, not yet linked to `<key>`) and
//! `local-assembling` (a completion half-way through concatenating the
//! parts). `<point>:stop` stops the process there with SIGSTOP instead, as
//! a frozen VM or a debugger would, until it gets SIGCONT. Never set it in
//! production.

use std::sync::OnceLock;

pub const ENV: &str = "ALITX_FAILPOINT";

/// Die (or stop) here if `ALITX_FAILPOINT` names this point.
pub fn failpoint(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    let Some(armed) = armed.as_deref() else {
        return;
    };
    let signal = match armed.strip_prefix(name) {
        Some("") => libc::SIGKILL,
        Some(":stop") => libc::SIGSTOP,
        _ => return,
    };
    tracing::warn!("failpoint {armed}: signalling this process");
    // SAFETY: sending a signal to ourselves has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}
