//! Progress bars for long stages; they draw only on a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) fn bar(len: u64, stage: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_string());
    bar
}
