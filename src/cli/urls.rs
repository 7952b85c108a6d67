//! `didgate urls`: the three webhook URLs to give didlogic, built from the configuration and
//! the token (the configured one, else the one kept in the data directory). `serve` prints
//! them only to a terminal, so they never land in a log; this prints them on demand.

use std::io::Write;

use super::{Error, Result, emit};
use crate::config::Config;
use crate::event::Hook;
use crate::ingest::route::hook_url;
use crate::ops::token::TOKEN_FILE;

/// Prints one line per hook: its name, then its URL (`https://` when `[tls]` is set). `host`
/// replaces the listen address (which is no use to didlogic when it is `0.0.0.0` or a private
/// address); without it, the first ACME domain does.
///
/// # Errors
/// [`Error::Usage`] when there is no token yet (the gateway never started and none is
/// configured) or the kept one cannot be read.
pub fn run(cfg: &Config, host: Option<&str>, out: &mut impl Write) -> Result<()> {
    let token = match &cfg.token {
        Some(t) => t.clone(),
        None => {
            let path = cfg.data_dir.join(TOKEN_FILE);
            match std::fs::read_to_string(&path) {
                Ok(t) => t.trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::Usage(format!(
                        "no token yet in {}: start `didgate serve` once, or set `token`",
                        cfg.data_dir.display()
                    )));
                }
                Err(e) => return Err(Error::Usage(format!("cannot read {}: {e}", path.display()))),
            }
        }
    };
    let listen = cfg.serve.listen;
    let https = cfg.tls.is_some();
    let host = match host.or(cfg.tls.as_ref().and_then(crate::tls::Settings::url_host)) {
        Some(h) => h.to_string(),
        None if listen.ip().is_unspecified() => "HOST".to_string(),
        None => listen.ip().to_string(),
    };
    let mut buf = Vec::new();
    for hook in Hook::ALL {
        let url = hook_url(https, &host, listen.port(), &token, hook);
        buf.extend_from_slice(format!("{:<9} {url}\n", hook.name()).as_bytes());
    }
    emit(out, &mut buf)
}
