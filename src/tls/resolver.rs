//! [`Resolver`]: which certificate a handshake gets. The served certificate is swapped whole
//! (a reload or a renewal) and new handshakes see the new one at once; connections already
//! open keep theirs. During an ACME order it also holds the challenge answers: a
//! `tls-alpn-01` certificate per domain, and the `http-01` tokens the port-80 listener serves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::ALPN_ACME;

/// The certificate store every TLS handshake consults.
#[derive(Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// `tls-alpn-01` answers by domain (lower case).
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// `http-01` answers: key authorization by token.
    http: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("has_certificate", &self.has_certificate())
            .finish_non_exhaustive()
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write<T>(lock: &RwLock<T>, f: impl FnOnce(&mut T)) {
    match lock.write() {
        Ok(mut g) => f(&mut g),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

impl Resolver {
    /// Serves `key` to every handshake from now on.
    pub fn install(&self, key: Arc<CertifiedKey>) {
        write(&self.current, |c| *c = Some(key));
    }

    /// Whether a certificate is being served.
    pub fn has_certificate(&self) -> bool {
        match self.current.read() {
            Ok(g) => g.is_some(),
            Err(poisoned) => poisoned.into_inner().is_some(),
        }
    }

    /// Answers `tls-alpn-01` validations of `domain` with `key` until [`Resolver::clear_challenges`].
    pub fn set_alpn_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        write(&self.alpn, |m| {
            m.insert(domain.to_ascii_lowercase(), key);
        });
    }

    /// Answers `http-01` validations of `token` with `key_authorization`.
    pub fn set_http_challenge(&self, token: &str, key_authorization: &str) {
        write(&self.http, |m| {
            m.insert(token.to_string(), key_authorization.to_string());
        });
    }

    /// The key authorization for an `http-01` token, while its order runs.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        match self.http.read() {
            Ok(g) => g.get(token).cloned(),
            Err(poisoned) => poisoned.into_inner().get(token).cloned(),
        }
    }

    /// Forgets every challenge answer (the order is over, whatever its outcome).
    pub fn clear_challenges(&self) {
        write(&self.alpn, HashMap::clear);
        write(&self.http, HashMap::clear);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A validation server offers only `acme-tls/1` (RFC 8737 §3) and names the domain.
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ALPN_ACME));
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return match self.alpn.read() {
                Ok(g) => g.get(&name).cloned(),
                Err(poisoned) => poisoned.into_inner().get(&name).cloned(),
            };
        }
        read(&self.current)
    }
}
