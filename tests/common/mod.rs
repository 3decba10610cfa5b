//! Temporary: what `tests/readme.rs` needs until it moves into `tests/it` (the harness is
//! `tests/it/harness`). Removed by the commit that moves it.

use std::path::Path;

/// Directory of the crate (for the bundled `routes.yaml` and `examples/`).
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the binary under test (built by cargo for integration tests).
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hookyard")
}
