//! Scratch folders for tests. Tests of one binary run in parallel threads of
//! one process, so a folder named after the process id alone is shared by
//! every test that asks for the same label (two tests writing the same
//! `0.png` while a third reads it failed CI once). Each call here gets its own.

use std::path::{Path, PathBuf};
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

/// Copies the folder `from` to `to`, recursively (a fixture model into a
/// test's own folder, say).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
    for entry in entries.flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("cannot copy to {}: {e}", target.display()));
        }
    }
}
