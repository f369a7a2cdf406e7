//! Files under the data dir hold secrets (key hashes, the pepper, cached
//! answers): the dir is created 0700 and every database file 0600; files
//! left readable by an older version are tightened at start. An existing
//! dir is not changed (it may be shared, such as /tmp): one that others
//! can read is named in a warning.

use std::path::{Path, PathBuf};

/// A data-dir file or directory that cannot be made or made private.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl FileError {
    fn at(path: &Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| Self { path: path.to_owned(), source }
    }
}

/// Creates `directory` (and missing parents) readable by its owner only.
pub fn private_directory(directory: &Path) -> Result<(), FileError> {
    let describe = FileError::at(directory);
    if directory.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(directory).map_err(describe)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    directory = %directory.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the data dir is readable by other users; its files are not (0600), but chmod 700 it"
                );
            }
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(directory).map_err(describe)
}

/// Creates `path` empty with mode 0600 if it is missing (SQLite then gives
/// its -wal and -shm files the same mode), or tightens an existing one.
pub fn private_file(path: &Path) -> Result<(), FileError> {
    let describe = FileError::at(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(&describe)?;
    restrict(path, 0o600).map_err(&describe)?;
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let companion = Path::new(&companion);
        if companion.exists() {
            restrict(companion, 0o600).map_err(FileError::at(companion))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path, most: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & !most != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & most))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_and_old_files_end_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let directory = root.path().join("data");
        private_directory(&directory).unwrap();
        assert_eq!(mode(&directory), 0o700);
        let old = directory.join("old.db");
        std::fs::write(&old, b"x").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&old).unwrap();
        assert_eq!((mode(&old), std::fs::read(&old).unwrap()), (0o600, b"x".to_vec()));
        let new = directory.join("new.db");
        private_file(&new).unwrap();
        assert_eq!(mode(&new), 0o600);
        std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_directory(&directory).unwrap();
        assert_eq!(mode(&directory), 0o755, "an existing dir is left as it is");
    }
}
