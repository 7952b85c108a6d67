//! What a pre-signed S3 URL says about itself: when it expires (SigV4's `X-Amz-Date` plus
//! `X-Amz-Expires`, or SigV2's `Expires`), so no download is tried past it. Pure.

/// The longest a SigV4 pre-signed URL lives (7 days), assumed when the URL does not say.
pub const MAX_URL_LIFE_MS: i64 = 7 * 24 * 3600 * 1000;

/// When `url` expires, in ms since the epoch: from its query when it says, else
/// `stored_at_ms` plus [`MAX_URL_LIFE_MS`].
pub fn expiry_ms(url: &str, stored_at_ms: i64) -> i64 {
    let fallback = stored_at_ms.saturating_add(MAX_URL_LIFE_MS);
    let Some((_, query)) = url.split_once('?') else {
        return fallback;
    };
    let query = query.split('#').next().unwrap_or_default();
    let mut date = None;
    let mut expires = None;
    let mut v2_expires = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "X-Amz-Date" => date = parse_amz_date(v),
            "X-Amz-Expires" => expires = v.parse::<i64>().ok().filter(|s| *s >= 0),
            "Expires" => v2_expires = v.parse::<i64>().ok(),
            _ => {}
        }
    }
    match (date, expires, v2_expires) {
        (Some(d), Some(e), _) => d.saturating_add(e.saturating_mul(1000)),
        (_, _, Some(unix)) => unix.saturating_mul(1000),
        _ => fallback,
    }
}

/// `20260512T051758Z` → ms since the epoch.
fn parse_amz_date(v: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let dt = time::PrimitiveDateTime::parse(v, format).ok()?;
    i64::try_from(dt.assume_utc().unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigv4_sigv2_and_absent_expiries() {
        let t = expiry_ms(
            "https://b.s3.amazonaws.com/r.mp3?X-Amz-Algorithm=AWS4&X-Amz-Date=20260512T051758Z&X-Amz-Expires=3600&X-Amz-Signature=ab",
            0,
        );
        assert_eq!(t, 1_778_563_078_000 + 3_600_000);
        assert_eq!(
            expiry_ms("https://h/r.mp3?Expires=1778563078&Signature=x", 0),
            1_778_563_078_000
        );
        assert_eq!(expiry_ms("https://h/r.mp3", 5), 5 + MAX_URL_LIFE_MS);
        assert_eq!(
            expiry_ms("https://h/r.mp3?X-Amz-Date=garbage&X-Amz-Expires=1", 5),
            5 + MAX_URL_LIFE_MS
        );
    }
}
