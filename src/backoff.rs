//! The retry schedule of the background jobs (ACME renewals, recording downloads): a first
//! wait doubled per failure, capped, and spread by up to a tenth so that what failed together
//! (a fleet, a batch of downloads) does not retry together.

use std::time::Duration;

/// The wait after `failures` failures in a row (the first failure waits about `first`).
pub(crate) fn doubling(first: Duration, failures: u32, cap: Duration) -> Duration {
    let doubled = first.saturating_mul(1 << failures.saturating_sub(1).min(20));
    let capped = doubled.min(cap);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    capped + capped / 10 * u32::from(byte[0]) / 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_is_capped_and_spread_by_at_most_a_tenth() {
        let (first, cap) = (Duration::from_secs(60), Duration::from_secs(6 * 3600));
        for (failures, base) in [(1, 60), (2, 120), (3, 240), (30, 6 * 3600)] {
            let d = doubling(first, failures, cap).as_secs();
            assert!(d >= base && d <= base + base / 10, "{failures}: {d}");
        }
    }
}
