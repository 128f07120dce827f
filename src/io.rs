//! File output that never leaves a half-written file behind.

use crate::Error;
use std::io::Write;
use std::path::Path;

/// The folder an output file goes into (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that `path` can be an output file: its folder exists and it is not
/// itself a folder. Commands call this before doing the work, so a typo in
/// `-o` fails at once instead of after a long run.
pub fn check_output_path(path: &Path) -> Result<(), Error> {
    let dir = folder_of(path);
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "{}: the folder {} does not exist; create it first or choose another output path",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(Error::Usage(format!("{}: is a folder; give a file name as the output path", path.display())));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder that
/// is renamed into place once complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
    check_output_path(path)?;
    let dir = folder_of(path);
    // Temporary files are created private (0600); the result should get the
    // permissions any new file gets (0666 less the umask).
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
