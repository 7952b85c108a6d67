//! Standard Webhooks (<https://www.standardwebhooks.com>): the `webhook-id` of an event and
//! the `webhook-signature` of one attempt.
//!
//! The id is derived from the event's kind and body alone (`evt_` and 32 hex digits of a
//! SHA-256), so it is the same across retries, restarts and every appliance that received the
//! same webhook: a receiver deduplicates on it. The signature is `v1,` and the base64
//! HMAC-SHA256 of `id.timestamp.body` under each secret (several during a rotation, space
//! separated), the secret being `whsec_` and the base64 of its key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes a secret may hold (the spec asks for 24 to 64).
pub const MIN_KEY_BYTES: usize = 24;
/// Most key bytes a secret may hold.
pub const MAX_KEY_BYTES: usize = 64;

/// A signing key, decoded from its `whsec_` form.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads a `whsec_...` secret.
    ///
    /// # Errors
    /// What is wrong with it (never the secret itself).
    pub fn parse(text: &str) -> Result<Secret, String> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("a secret starts with {SECRET_PREFIX:?}"))?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| format!("the part after {SECRET_PREFIX:?} is not base64"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; a secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES}",
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    /// The base64 HMAC-SHA256 of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        STANDARD.encode(ctx.sign().as_ref())
    }
}

/// The `webhook-id` of an event: stable for its kind and body.
pub fn webhook_id(kind: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(kind.as_bytes());
    ctx.update(&[0]);
    ctx.update(body);
    let digest = ctx.finish();
    let mut id = String::with_capacity(36);
    id.push_str("evt_");
    for b in &digest.as_ref()[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The `webhook-signature` header: one `v1,` signature per secret, space separated.
pub fn header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| format!("v1,{}", s.sign(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn signs_the_specifications_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = header(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_secret_and_bad_secrets_are_refused() {
        let a = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap();
        let both = header(&[a.clone(), b.clone()], "evt_1", 5, b"x");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(
            parts,
            [
                format!("v1,{}", a.sign("evt_1", 5, b"x")),
                format!("v1,{}", b.sign("evt_1", 5, b"x"))
            ]
        );
        assert_ne!(parts[0], parts[1]);
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            let e = Secret::parse(bad).unwrap_err();
            assert!(!e.contains("MfKQ"), "{e}");
        }
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn the_id_depends_on_kind_and_body_only() {
        let id = webhook_id("cdr", b"{\"a\":1}");
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("evt_"));
        assert_eq!(id, webhook_id("cdr", b"{\"a\":1}"));
        assert_ne!(id, webhook_id("sms", b"{\"a\":1}"));
        assert_ne!(id, webhook_id("cdr", b"{\"a\":2}"));
    }
}
