//! Scratch folders for tests. Tests of one binary run in parallel threads of
//! one process, so a folder named after the process id alone is shared by
//! every test that asks for the same label (two tests writing the same
//! `0.png` while a third reads it failed CI once). Each call here gets its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty folder under the temp dir, unique to this call:
/// `sd-rs-<label>-<pid>-<n>`.
pub fn scratch_dir(label: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sd-rs-{label}-{}-{n}", std::process::id()));
    // A leftover from an earlier process with the same id would leak old files in.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create scratch folder {}: {e}", dir.display()));
    dir
}
