//! A certificate and its key as the handshake uses them: read from PEM, checked (the key
//! matches, the chain parses, the validity is known), and written back for ACME.
//!
//! Pure apart from [`load`] and [`write_private`], which are the file edges.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate chain with its key, ready to present, and what the job needs to know of it.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Chain and signing key, as rustls presents them.
    pub key: Arc<CertifiedKey>,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
    /// The DNS names the leaf covers (subject alternative names), lower case.
    pub names: Vec<String>,
    /// The leaf's serial number in hex, to tell certificates apart in logs.
    pub serial: String,
}

impl Loaded {
    /// When a renewal is due: two thirds into the certificate's life (Let's Encrypt's advice,
    /// which leaves a third of the life, 30 days of a 90-day certificate, to retry in).
    pub fn renew_at(&self) -> i64 {
        let life = self.not_after.saturating_sub(self.not_before).max(0);
        self.not_before.saturating_add(life / 3 * 2)
    }

    /// Whether the leaf covers every name in `domains` (exactly, or by a `*.` wildcard one
    /// label deep).
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| {
            let d = d.to_ascii_lowercase();
            self.names.iter().any(|n| {
                n == &d
                    || n.strip_prefix("*.").is_some_and(|base| {
                        d.split_once('.')
                            .is_some_and(|(label, rest)| !label.is_empty() && rest == base)
                    })
            })
        })
    }
}

/// Parses a PEM chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// A message naming what is wrong: no certificate, no key, an unsupported key type, a key
/// that does not belong to the leaf, a leaf that does not parse.
pub fn parse(chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not valid PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("the certificate file holds no CERTIFICATE block".into());
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key file holds no usable PRIVATE KEY block: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key is not usable: {e}"))?;
    let (not_before, not_after, names, serial) = {
        let (_, x509) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
        let validity = x509.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                    names.push(n.to_ascii_lowercase());
                }
            }
        }
        let serial = x509.raw_serial_as_string().replace(':', "");
        (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
            names,
            serial,
        )
    };
    let key = CertifiedKey::new(chain, signing);
    key.keys_match()
        .map_err(|e| format!("the private key does not belong to the certificate: {e}"))?;
    Ok(Loaded {
        key: Arc::new(key),
        not_before,
        not_after,
        names,
        serial,
    })
}

/// Reads and parses a certificate file and its key file.
///
/// # Errors
/// A message naming the file that cannot be read, or what [`parse`] found wrong.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (chain, key_pem) = (read(cert)?, read(key)?);
    parse(&chain, &key_pem).map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
}

/// Writes `bytes` to `path` atomically and readable by the owner only (0600): a temporary
/// file, fsync, rename over, fsync of the directory. A crash leaves the old file or the new
/// one, never a mix, and never a private key readable by others.
///
/// # Errors
/// Any I/O failure; the temporary file is removed.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable_file::replace(path, bytes, 0o600)
}

/// The self-signed certificate a `tls-alpn-01` validation expects for `domain` (RFC 8737):
/// the domain as its only name and the SHA-256 of the key authorization in the critical
/// `acmeIdentifier` extension.
///
/// # Errors
/// The certificate could not be generated (a message).
pub fn alpn_challenge(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let fail =
        |e: rcgen::Error| format!("cannot make the tls-alpn-01 certificate for {domain}: {e}");
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| format!("cannot use the tls-alpn-01 key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("cannot use the tls-alpn-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_pair_parses_with_its_names_and_a_renewal_two_thirds_in() {
        let (cert, key) = self_signed(&["Hooks.Example.com", "*.example.org"]);
        let loaded = parse(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(loaded.names, ["hooks.example.com", "*.example.org"]);
        assert!(loaded.covers(&["hooks.example.com".into(), "a.example.org".into()]));
        assert!(!loaded.covers(&["a.b.example.org".into()]));
        assert!(!loaded.covers(&["example.org".into()]));
        let life = loaded.not_after - loaded.not_before;
        assert_eq!(loaded.renew_at(), loaded.not_before + life / 3 * 2);
    }

    #[test]
    fn a_key_of_another_certificate_or_garbage_is_refused_with_a_reason() {
        let (cert, _) = self_signed(&["a.example"]);
        let (_, other_key) = self_signed(&["a.example"]);
        let e = parse(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        let e = parse(b"garbage", other_key.as_bytes()).unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let e = parse(cert.as_bytes(), b"nothing").unwrap_err();
        assert!(e.contains("PRIVATE KEY"), "{e}");
    }

    #[test]
    fn private_files_are_written_whole_and_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
