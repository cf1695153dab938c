//! Tests that cannot run here report it instead of passing silently: one line
//! `SKIP <test>: <reason>` on stderr, and the same line appended to the file named by
//! `$MOE_SKIP_LOG` when it is set, so that `scripts/test` can list every skip after the run and
//! fail on any whose reason is not [`NO_GPU`] (CI has no GPU; anything else is a gap).

use std::io::Write;

/// The reason every skip for a missing or unusable CUDA device starts with.
pub const NO_GPU: &str = "no GPU";

/// Reports that the current test (or part of it) did not run, and why.
pub fn skip(reason: impl std::fmt::Display) {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let line = format!("SKIP {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("MOE_SKIP_LOG") {
        // One short append per line: concurrent test processes do not interleave within it.
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = logged {
            panic!(
                "cannot append to MOE_SKIP_LOG {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}
