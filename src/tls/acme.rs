//! ACME (RFC 8555): the account, one order for every configured domain, its challenges, and
//! the certificate it yields. Called by the TLS job ([`crate::tls::job`]) when a certificate
//! is missing or due; it never decides when.
//!
//! Files in `<data_dir>/tls/` (all 0600, written atomically): `acme-account.json` (the
//! account key and URL, tied to the directory it was made on), `acme-cert.pem` (the chain)
//! and `acme-key.pem` (the certificate's key, a fresh P-256 key per order).

use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use crate::tls::acme_http::Client;
use crate::tls::certificate::{self, Loaded};
use crate::tls::resolver::Resolver;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "staging"`): untrusted certificates, far
/// higher rate limits, for trying a set-up out.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The first wait after a failed order; each further failure doubles it, up to
/// [`RENEWAL_RETRY_MAX`].
pub const DEFAULT_RENEWAL_RETRY: Duration = Duration::from_secs(60);
/// The longest wait between two attempts: a certificate due for renewal has a third of its
/// life (30 days for Let's Encrypt) left, so retrying every 6 h is a hundred chances.
pub const RENEWAL_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// How long the CA gets to validate the challenges, and then to issue.
const ORDER_POLL_TIMEOUT: Duration = Duration::from_secs(90);

/// Account file name in `<data_dir>/tls/`.
pub const ACCOUNT_FILE: &str = "acme-account.json";
/// Certificate chain file name in `<data_dir>/tls/`.
pub const CERT_FILE: &str = "acme-cert.pem";
/// Certificate key file name in `<data_dir>/tls/`.
pub const KEY_FILE: &str = "acme-key.pem";

/// How the CA checks that this host answers for a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// On the TLS listener itself (port 443 as the CA sees it); needs nothing else.
    TlsAlpn01,
    /// On a plain listener on port 80 (`http_redirect`).
    Http01,
}

impl Challenge {
    /// The configuration's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// `[tls.acme]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The names the certificate covers (one order, one certificate with all of them).
    pub domains: Vec<String>,
    /// Contact for the CA's expiry and policy mail.
    pub email: Option<String>,
    /// The directory URL.
    pub directory: String,
    /// A PEM file of the CA certificate(s) to trust for the directory, for a private ACME
    /// server; `None`: the public web PKI.
    pub directory_ca: Option<PathBuf>,
    /// How domains are validated.
    pub challenge: Challenge,
    /// The first wait after a failed order (doubling up to [`RENEWAL_RETRY_MAX`]).
    pub renewal_retry: Duration,
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The stored certificate, when there is one, it parses, and it covers every domain.
pub fn stored(tls_dir: &Path, settings: &Settings) -> Option<Loaded> {
    let cert = tls_dir.join(CERT_FILE);
    if !cert.exists() {
        return None;
    }
    match certificate::load(&cert, &tls_dir.join(KEY_FILE)) {
        Ok(loaded) if loaded.covers(&settings.domains) => Some(loaded),
        Ok(_) => {
            crate::ops::log::info(format_args!(
                "the stored ACME certificate does not cover every configured domain: ordering a new one"
            ));
            None
        }
        Err(e) => {
            crate::ops::log::warn(format_args!(
                "the stored ACME certificate is unusable ({e}): ordering a new one"
            ));
            None
        }
    }
}

/// Runs one order to the end: account (stored, or created and stored), challenges answered
/// through `resolver`, a fresh key, the certificate. The chain and key are written to
/// `tls_dir` before the certificate is returned, so a restart reuses it.
///
/// # Errors
/// What failed, as the CA or the network said it.
pub fn obtain(tls_dir: &Path, settings: &Settings, resolver: &Resolver) -> Result<Loaded, String> {
    let ca = match &settings.directory_ca {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the ACME runtime: {e}"))?;
    let result = runtime.block_on(order(tls_dir, settings, resolver, ca.as_deref()));
    resolver.clear_challenges();
    let (chain, key) = result?;
    let loaded = certificate::parse(chain.as_bytes(), key.as_bytes())
        .map_err(|e| format!("the CA's certificate is unusable: {e}"))?;
    // The key first: a crash between the two leaves a new key with the old chain, which
    // fails the key check on start and orders again, never a served mismatch.
    certificate::write_private(&tls_dir.join(KEY_FILE), key.as_bytes())
        .and_then(|()| certificate::write_private(&tls_dir.join(CERT_FILE), chain.as_bytes()))
        .map_err(|e| format!("cannot store the certificate in {}: {e}", tls_dir.display()))?;
    Ok(loaded)
}

fn acme_error(what: &'static str) -> impl Fn(instant_acme::Error) -> String {
    move |e| format!("{what}: {e}")
}

async fn load_account(
    tls_dir: &Path,
    settings: &Settings,
    ca: Option<&[u8]>,
) -> Result<Account, String> {
    let client = || Client::new(ca).map(|c| Account::builder_with_http(Box::new(c)));
    let path = tls_dir.join(ACCOUNT_FILE);
    if let Ok(text) = std::fs::read(&path)
        && let Ok(stored) = serde_json::from_slice::<StoredAccount>(&text)
        && stored.directory == settings.directory
    {
        return client()?
            .from_credentials(stored.credentials)
            .await
            .map_err(acme_error("cannot restore the ACME account"));
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = client()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(acme_error("cannot create the ACME account"))?;
    let stored = StoredAccount {
        directory: settings.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&stored)
        .map_err(|e| format!("cannot encode the account: {e}"))?;
    certificate::write_private(&path, &json)
        .map_err(|e| format!("cannot store the ACME account in {}: {e}", path.display()))?;
    crate::ops::log::info(format_args!(
        "created an ACME account on {}",
        settings.directory
    ));
    Ok(account)
}

async fn order(
    tls_dir: &Path,
    settings: &Settings,
    resolver: &Resolver,
    ca: Option<&[u8]>,
) -> Result<(String, String), String> {
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let new_order = NewOrder::new(&identifiers);
    let account = load_account(tls_dir, settings, ca).await?;
    let mut order = match account.new_order(&new_order).await {
        // The CA no longer knows the stored account (deactivated, or a CA that lost its
        // state): make a new one, once.
        Err(instant_acme::Error::Api(p))
            if p.r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
        {
            crate::ops::log::warn(format_args!(
                "the ACME CA does not know the stored account: creating a new one"
            ));
            let _ = std::fs::remove_file(tls_dir.join(ACCOUNT_FILE));
            load_account(tls_dir, settings, ca)
                .await?
                .new_order(&new_order)
                .await
        }
        other => other,
    }
    .map_err(acme_error("the CA refused the order"))?;
    let kind = match settings.challenge {
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Challenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(acme_error("cannot read an authorization"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("an authorization is {other:?}")),
        }
        let domain = authz.identifier().to_string();
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            format!(
                "the CA offers no {} challenge for {domain}",
                settings.challenge.name()
            )
        })?;
        let key_authorization = challenge.key_authorization();
        match settings.challenge {
            Challenge::TlsAlpn01 => resolver.set_alpn_challenge(
                &domain,
                certificate::alpn_challenge(&domain, key_authorization.digest().as_ref())?,
            ),
            Challenge::Http01 => {
                resolver.set_http_challenge(&challenge.token, key_authorization.as_str());
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(acme_error("cannot start a validation"))?;
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(ORDER_POLL_TIMEOUT);
    let status = order
        .poll_ready(&polling)
        .await
        .map_err(acme_error("the validation did not finish"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the CA did not validate the domains ({status:?}): check that {} reach this host",
            settings.challenge.name()
        ));
    }
    let mut params = rcgen::CertificateParams::new(settings.domains.clone())
        .map_err(|e| format!("cannot make the certificate request: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("cannot make the certificate request: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(acme_error("the CA refused to finalize the order"))?;
    let chain = order
        .poll_certificate(&polling)
        .await
        .map_err(acme_error("the certificate was not issued"))?;
    Ok((chain, key.serialize_pem()))
}
