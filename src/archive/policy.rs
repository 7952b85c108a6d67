//! Which URLs the archiver may fetch. `recording_url` comes from a request body, so it is
//! attacker-controlled: by default only `https`, only hosts `allowed_hosts` lets through, and
//! only public addresses, checked on every address a name resolves to and again after every
//! redirect. Pure: the resolver and the fetch call it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Which non-public addresses may be fetched (tests, or an S3-compatible store on the LAN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivateAddresses {
    /// None: only public addresses (the default).
    Deny,
    /// These ranges, beside the public addresses.
    Allow(Vec<IpNet>),
    /// Any address.
    AllowAll,
}

/// The fetch policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `http://` URLs too (off by default).
    pub allow_http: bool,
    /// Non-public addresses allowed.
    pub private: PrivateAddresses,
    /// Host patterns (`*` matches any run of characters, e.g. `*.amazonaws.com`); empty: any
    /// host.
    pub allowed_hosts: Vec<String>,
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, CGNAT,
/// multicast, broadcast, reserved, documentation or benchmarking space, nor an IPv6 form of
/// such an IPv4 address (mapped, compatible, NAT64).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0)) // discard 100::/64
        }
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`)
/// or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4];
    (mapped || compatible || nat64).then_some(tail)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(o[0] == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 2) // documentation
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 224) // multicast, reserved, broadcast
}

/// Whether `host` matches `pattern` (ASCII case-insensitive; `*` matches any run of
/// characters, none included).
pub fn glob(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.as_bytes(), host.as_bytes());
    let (mut pi, mut hi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while hi < h.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, hi));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&h[hi]) {
            pi += 1;
            hi += 1;
        } else if let Some((sp, sh)) = star {
            pi = sp + 1;
            hi = sh + 1;
            star = Some((sp, sh + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Policy {
    /// Whether an address may be connected to.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        is_public(ip)
            || match &self.private {
                PrivateAddresses::Deny => false,
                PrivateAddresses::AllowAll => true,
                PrivateAddresses::Allow(nets) => nets.iter().any(|n| n.contains(&ip)),
            }
    }

    /// Checks a URL before any connection: scheme, host pattern, and an address written in
    /// the URL itself. Names are checked again once resolved.
    ///
    /// # Errors
    /// Why the URL is refused.
    pub fn check(&self, uri: &http::Uri) -> Result<(), String> {
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            Some("http") => return Err("an http:// URL (allow_http is off)".into()),
            other => return Err(format!("scheme {other:?} is not fetched")),
        }
        let host = uri.host().ok_or("the URL has no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|p| glob(p, bare)) {
            return Err(format!("host {bare} is not in allowed_hosts"));
        }
        if let Ok(ip) = bare.parse::<IpAddr>()
            && !self.address_allowed(ip)
        {
            return Err(format!("{ip} is not a public address"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in [
            "52.95.110.1",
            "8.8.8.8",
            "2600:1f18::1",
            "::ffff:52.95.110.1",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn globs_match_hosts() {
        assert!(glob("*.amazonaws.com", "bucket.s3.eu-west-1.amazonaws.com"));
        assert!(glob("*.AmazonAWS.com", "x.amazonaws.com"));
        assert!(!glob("*.amazonaws.com", "amazonaws.com.evil.net"));
        assert!(!glob("*.amazonaws.com", "evilamazonaws.com"));
        assert!(glob("exact.host", "exact.host"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn urls_are_checked_for_scheme_host_and_literal_address() {
        let mut p = Policy {
            allow_http: false,
            private: PrivateAddresses::Deny,
            allowed_hosts: vec!["*.amazonaws.com".into()],
        };
        let check = |p: &Policy, u: &str| p.check(&u.parse::<http::Uri>().unwrap());
        assert!(check(&p, "https://b.s3.amazonaws.com/x.mp3?X-Amz-Expires=60").is_ok());
        assert!(check(&p, "http://b.s3.amazonaws.com/x.mp3").is_err());
        assert!(check(&p, "https://evil.example/x.mp3").is_err());
        assert!(check(&p, "ftp://b.s3.amazonaws.com/x").is_err());
        p.allowed_hosts.clear();
        assert!(check(&p, "https://169.254.169.254/latest/meta-data").is_err());
        assert!(check(&p, "https://[::ffff:127.0.0.1]/x").is_err());
        p.private = PrivateAddresses::Allow(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(check(&p, "https://127.0.0.1:9/x").is_ok());
        assert!(check(&p, "https://10.0.0.1/x").is_err());
    }
}
