//! Certificate files, as cert-manager writes them into a mounted Secret volume, reloaded when
//! their content changes.
//!
//! The kubelet replaces the files of a Secret volume by swapping a symbolic link, so the loader
//! compares file contents rather than modification times or inotify events on one path.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::{CertResolver, TlsError, certified_key};
use crate::config::FileTls;

/// Contents of the certificate and key files as last read.
#[derive(Clone, PartialEq, Eq)]
pub struct FileContents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Reads both files and parses them into a serving key.
pub async fn load(files: &FileTls) -> Result<(CertifiedKey, FileContents), TlsError> {
    let contents = read(files).await?;
    let key = certified_key(&contents.cert, &contents.key)?;
    Ok((key, contents))
}

async fn read(files: &FileTls) -> Result<FileContents, TlsError> {
    let read_file = |path: std::path::PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|source| TlsError::ReadFile { path, source })
    };
    let cert = read_file(files.cert_file.clone()).await?;
    let key = read_file(files.key_file.clone()).await?;
    Ok(FileContents { cert, key })
}

/// Checks the files every `files.reload_interval` and serves their new content once both parse
/// and match. A failed read or parse keeps the current certificate and is logged once per
/// distinct content.
pub async fn reload_on_change(
    files: FileTls,
    resolver: Arc<CertResolver>,
    mut current: FileContents,
) {
    let mut rejected: Option<FileContents> = None;
    let mut interval = tokio::time::interval(files.reload_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let contents = match read(&files).await {
            Ok(contents) => contents,
            Err(error) => {
                tracing::warn!(%error, "failed to read the webhook certificate files; serving the previous certificate");
                continue;
            }
        };
        if contents == current || rejected.as_ref() == Some(&contents) {
            continue;
        }
        match certified_key(&contents.cert, &contents.key) {
            Ok(key) => {
                resolver.replace(key);
                current = contents;
                rejected = None;
                tracing::info!(cert_file = %files.cert_file.display(), "reloaded the webhook serving certificate");
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    cert_file = %files.cert_file.display(),
                    "the changed webhook certificate files are invalid; serving the previous certificate"
                );
                rejected = Some(contents);
            }
        }
    }
}
