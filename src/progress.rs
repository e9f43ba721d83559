//! The progress bars `upload` and `verify` draw on stderr.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `length` bytes drawn with `template` (indicatif's syntax), or a
/// hidden one when `show` is false (not a terminal, or `--json`).
pub fn bar(show: bool, length: u64, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}
