//! The hook token: the secret path segment that stands in for the signature didlogic does not
//! send.
//!
//! Owns generating it (on first start, when none is configured), keeping it in the data
//! directory with mode 0600, and reading it back on restart. Comparison lives in `route.rs`.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// File in the data directory that keeps a generated token.
pub const TOKEN_FILE: &str = "token";

/// Random bytes in a generated token: 192 bits, well above the 128 a secret URL needs.
pub const TOKEN_RANDOM_BYTES: usize = 24;

/// The token to use: the configured one, else the kept one, else a new one (kept from now on).
///
/// # Errors
/// The file cannot be read or written, or the system has no randomness, or the kept token is
/// not a valid token (edited by hand).
pub fn load_or_create(data_dir: &Path, configured: Option<&str>) -> std::io::Result<String> {
    if let Some(t) = configured {
        return Ok(t.to_string());
    }
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::File::open(&path) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            let t = s.trim().to_string();
            crate::config::check_token(&t).map_err(|e| {
                std::io::Error::new(ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?;
            Ok(t)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut raw = [0u8; TOKEN_RANDOM_BYTES];
            getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(token.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_keeps_private_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), None).unwrap();
        assert_eq!(first.len(), TOKEN_RANDOM_BYTES * 2);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path(), None).unwrap(), first);
        assert_eq!(
            load_or_create(dir.path(), Some("given-token-0123456")).unwrap(),
            "given-token-0123456"
        );
    }

    #[test]
    fn refuses_a_mangled_kept_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "short\n").unwrap();
        assert!(load_or_create(dir.path(), None).is_err());
    }
}
