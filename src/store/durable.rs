//! Durable small files: the one write-temp-fsync-rename writer of the crate (the store's
//! checkpoint, and the broker's, plugins' and messaging's state files), and the directory
//! fsync that makes a name durable. Blocking: call it from a thread that may block on fsync
//! (never a tokio worker).

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::StoreError;

/// The temporary name `write_file` writes before renaming: `<path>.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// Replaces `path` with `bytes` atomically and durably: writes `<path>.tmp`, fsyncs it
/// (`fdatasync`), renames it over `path`, then fsyncs the directory. After a crash `path`
/// holds either its old content or `bytes`, never a mix; a stale `<path>.tmp` may remain and
/// is overwritten by the next write.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    #[cfg(test)]
    super::powerloss::check(path)?;
    let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_data())
        .map_err(|e| StoreError::io(&tmp, e))?;
    drop(f);
    #[cfg(test)]
    super::powerloss::check(path)?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    sync_dir(parent(path))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsyncs a directory, making the names created, renamed or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(test)]
    super::powerloss::check(dir)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_the_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_file(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_file(&path, b"second, longer").unwrap();
        write_file(&path, b"3").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"3");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("state.json")]);
    }

    #[test]
    fn the_temporary_keeps_the_whole_name() {
        // Two files that differ only in their extension must not share a temporary.
        let a = tmp_path(Path::new("d/x.wasm"));
        let b = tmp_path(Path::new("d/x.cwasm"));
        assert_eq!(a, Path::new("d/x.wasm.tmp"));
        assert_ne!(a, b);
        assert_eq!(parent(Path::new("bare")), Path::new("."));
    }

    #[test]
    fn a_stale_temporary_is_overwritten_and_a_missing_directory_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        std::fs::write(
            tmp_path(&path),
            b"left by a crash, longer than the new content",
        )
        .unwrap();
        write_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!tmp_path(&path).exists());
        let missing = dir.path().join("no/such/dir/file");
        match write_file(&missing, b"x") {
            Err(StoreError::Io { path, .. }) => assert_eq!(path, tmp_path(&missing)),
            other => panic!("expected an Io error naming the temporary, got {other:?}"),
        }
    }
}
