//! Opening the object store of an archive sink: an S3-compatible bucket or a local directory.
//!
//! Credentials come, in this order, from the sink's config, the standard `AWS_*` environment,
//! the shared profile files (`~/.aws/credentials`, `~/.aws/config`), and finally the instance
//! or container credentials that `object_store` finds itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::ArchiveError;
use crate::config::ArchiveSinkConfig;

/// An opened store and a description of it for logs.
pub fn open(
    name: &str,
    cfg: &ArchiveSinkConfig,
) -> Result<(Arc<dyn ObjectStore>, String), ArchiveError> {
    let invalid = |m: String| ArchiveError::Invalid {
        sink: name.to_string(),
        message: m,
    };
    if let Some(dir) = &cfg.path {
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid(format!("cannot create directory {}: {e}", dir.display())))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| invalid(format!("cannot use directory {}: {e}", dir.display())))?;
        return Ok((Arc::new(fs), format!("file://{}", dir.display())));
    }
    let bucket = cfg.bucket.clone().expect("validated: bucket or path");
    let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let profile_name = cfg
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".to_string());
    let profile = Profile::load(&profile_name);
    let region = cfg
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| profile.region.clone())
        .unwrap_or_else(|| "us-east-1".to_string());
    b = b.with_region(region);
    match (&cfg.access_key_id, &cfg.secret_access_key) {
        (Some(k), Some(s)) => {
            b = b.with_access_key_id(k).with_secret_access_key(s);
            if let Some(t) = &cfg.session_token {
                b = b.with_token(t);
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(invalid(
                "access_key_id and secret_access_key go together".into(),
            ))
        }
        (None, None) if env("AWS_ACCESS_KEY_ID").is_none() => {
            if let (Some(k), Some(s)) = (&profile.access_key_id, &profile.secret_access_key) {
                b = b.with_access_key_id(k).with_secret_access_key(s);
                if let Some(t) = &profile.session_token {
                    b = b.with_token(t);
                }
            }
        }
        (None, None) => {}
    }
    let allow_http = cfg
        .endpoint
        .as_ref()
        .is_some_and(|ep| ep.starts_with("http://"));
    if let Some(ep) = &cfg.endpoint {
        b = b.with_endpoint(ep);
    }
    let path_style = cfg.path_style.unwrap_or(cfg.endpoint.is_some());
    b = b.with_virtual_hosted_style_request(!path_style);
    // A few quick retries inside each request; the archive writer retries for as long as it
    // takes around them, with its own backoff and visible errors.
    b = b.with_retry(RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        ..Default::default()
    });
    b = b.with_client_options(
        ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60)),
    );
    let store = b
        .build()
        .map_err(|e| invalid(format!("cannot configure S3 bucket {bucket}: {e}")))?;
    let describe = match &cfg.endpoint {
        Some(ep) => format!("s3://{bucket} at {ep}"),
        None => format!("s3://{bucket}"),
    };
    Ok((Arc::new(store), describe))
}

/// The parts of an AWS shared-config profile strait uses.
#[derive(Debug, Default, PartialEq)]
pub struct Profile {
    /// `aws_access_key_id`.
    pub access_key_id: Option<String>,
    /// `aws_secret_access_key`.
    pub secret_access_key: Option<String>,
    /// `aws_session_token`.
    pub session_token: Option<String>,
    /// `region` (from the config file).
    pub region: Option<String>,
}

impl Profile {
    /// Reads a profile from `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE` or their
    /// defaults under `~/.aws`. Missing files give an empty profile.
    pub fn load(name: &str) -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".aws").join(default))
        };
        let creds = read_ini(&file("AWS_SHARED_CREDENTIALS_FILE", "credentials"));
        let config = read_ini(&file("AWS_CONFIG_FILE", "config"));
        let in_creds = creds.get(name);
        // The config file names profiles `[profile x]`, except `[default]`.
        let in_config = config
            .get(&format!("profile {name}"))
            .or_else(|| config.get(name));
        let get = |k: &str| {
            in_creds
                .and_then(|s| s.get(k))
                .or_else(|| in_config.and_then(|s| s.get(k)))
                .cloned()
        };
        Profile {
            access_key_id: get("aws_access_key_id"),
            secret_access_key: get("aws_secret_access_key"),
            session_token: get("aws_session_token"),
            region: in_config.and_then(|s| s.get("region")).cloned(),
        }
    }
}

type Ini = HashMap<String, HashMap<String, String>>;

fn read_ini(path: &Path) -> Ini {
    std::fs::read_to_string(path)
        .map(|t| parse_ini(&t))
        .unwrap_or_default()
}

fn parse_ini(text: &str) -> Ini {
    let mut out = Ini::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_profiles_from_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[ops]\naws_access_key_id=C\naws_secret_access_key=D\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile ops]\nregion = us-west-2\n",
        )
        .unwrap();
        let ini = read_ini(&creds);
        assert_eq!(ini["ops"]["aws_access_key_id"], "C");
        let cfg = read_ini(&config);
        assert_eq!(cfg["profile ops"]["region"], "us-west-2");
        assert_eq!(cfg["default"]["region"], "eu-west-1");
    }
}
