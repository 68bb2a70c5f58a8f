//! Writing a server's own secret key files (share keys, key packages) so
//! that a crash never leaves a short one.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::{DataDirError, SECRET, io_err, write_new};

/// Writes `contents` as the new secret file `path` (mode 0600) in
/// `keys_dir` (made with mode 0700 when missing): to a temporary file
/// beside it, then renamed and the directory synced, so a crash leaves the
/// whole file or none, never a short one the next start refuses. Refuses
/// to replace a file that exists (`exists` says which).
pub(crate) fn write_secret_file(
    keys_dir: &Path,
    path: &Path,
    contents: &[u8],
    exists: &str,
) -> Result<(), DataDirError> {
    if !keys_dir.is_dir() {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(keys_dir)
            .map_err(io_err(keys_dir))?;
    }
    let tmp = path.with_extension("key.tmp");
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(io_err(&tmp))?;
    }
    write_new(&tmp, contents, SECRET)?;
    if path.exists() {
        return Err(io_err(path)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            exists.to_owned(),
        )));
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    fs::File::open(keys_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(keys_dir))
}
