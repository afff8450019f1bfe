//! Checkpoints in a local file, replaced atomically (write, fsync, rename, fsync directory).

use std::path::PathBuf;

use super::{Checkpoint, CheckpointError};

/// A checkpoint file. One file holds one pipeline's checkpoint.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path`; the file is created on first save.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.clone(),
            source,
        }
    }

    pub(super) async fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let c = Checkpoint::from_json(&text)?;
        if c.pipeline != pipeline {
            return Err(CheckpointError::Corrupt(format!(
                "{} holds the checkpoint of pipeline {:?}, not {:?}",
                self.path.display(),
                c.pipeline,
                pipeline
            )));
        }
        Ok(Some(c))
    }

    pub(super) async fn save(&self, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
        let text = ckpt.to_json()?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes()))
            .await
            .map_err(|e| CheckpointError::Corrupt(e.to_string()))?
            .map_err(|e| self.io(e))
    }

    pub(super) async fn reset(&self, _pipeline: &str) -> Result<bool, CheckpointError> {
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }

    pub(super) fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn save_load_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("sub/ckpt.json"));
        assert!(store.load("p").await.unwrap().is_none());
        let c = Checkpoint {
            pipeline: "p".into(),
            ..Default::default()
        };
        store.save(&c).await.unwrap();
        assert_eq!(store.load("p").await.unwrap().unwrap().pipeline, "p");
        assert!(store.load("other").await.is_err());
        assert!(store.reset("p").await.unwrap());
        assert!(!store.reset("p").await.unwrap());
    }
}
