//! [`Tally`]: the rollup of one quarter-hour of call time, and the arithmetic reports and the
//! writer share. Pure.
//!
//! Rollups are kept per quarter hour of UTC ([`BUCKET_MS`]): every time zone's offset is a
//! whole number of quarter hours, so any zone's days, hours, weeks and months are unions of
//! buckets, and a year is 35,040 rollups to add, whatever the traffic.

use super::facts::{Facts, Kind};

/// The width of one rollup: 15 minutes.
pub const BUCKET_MS: i64 = 15 * 60 * 1000;

/// The bucket a call time falls in.
pub fn bucket_of(ms: i64) -> i64 {
    ms.div_euclid(BUCKET_MS)
}

/// Counters over a set of calls, recordings and SMS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// CDRs.
    pub calls: u64,
    /// CDRs answered ([`Facts::answered`]).
    pub answered: u64,
    /// Billed seconds of all CDRs ([`Facts::billed_seconds`]), exact.
    pub billsec: u64,
    /// Billed minutes: each CDR's billed seconds rounded up to the minute, summed.
    pub billed_minutes: u64,
    /// The longest billed call, in seconds.
    pub longest: u64,
    /// CDRs with billed seconds (the calls a recording is expected for).
    pub billed_calls: u64,
    /// Recording events.
    pub recordings: u64,
    /// Recording events whose archive holds the file (`fetched` or `suspicious`).
    pub archived: u64,
    /// SMS.
    pub sms: u64,
}

/// Fields in the stored form, in order.
const FIELDS: usize = 9;

/// Stored size: a version byte and nine u64 BE.
pub const ENCODED_LEN: usize = 1 + FIELDS * 8;

const VERSION: u8 = 1;

impl Tally {
    /// The tally of one event (a recording counts as archived when `archived`).
    pub fn of(f: &Facts, archived: bool) -> Tally {
        let mut t = Tally::default();
        match f.kind {
            Kind::Cdr => {
                let b = u64::from(f.billed_seconds());
                t.calls = 1;
                t.answered = u64::from(f.answered());
                t.billsec = b;
                t.billed_minutes = b.div_ceil(60);
                t.longest = b;
                t.billed_calls = u64::from(b > 0);
            }
            Kind::Recording => {
                t.recordings = 1;
                t.archived = u64::from(archived);
            }
            Kind::Sms => t.sms = 1,
        }
        t
    }

    fn fields(&self) -> [u64; FIELDS] {
        [
            self.calls,
            self.answered,
            self.billsec,
            self.billed_minutes,
            self.longest,
            self.billed_calls,
            self.recordings,
            self.archived,
            self.sms,
        ]
    }

    fn from_fields(f: [u64; FIELDS]) -> Tally {
        Tally {
            calls: f[0],
            answered: f[1],
            billsec: f[2],
            billed_minutes: f[3],
            longest: f[4],
            billed_calls: f[5],
            recordings: f[6],
            archived: f[7],
            sms: f[8],
        }
    }

    /// Adds `other` (sums; the longest call is the larger).
    pub fn add(&mut self, other: &Tally) {
        let mut f = self.fields();
        for (a, b) in f.iter_mut().zip(other.fields()) {
            *a = a.saturating_add(b);
        }
        f[4] = self.longest.max(other.longest);
        *self = Tally::from_fields(f);
    }

    /// Takes `other` out (sums only: the longest call cannot be taken out, the caller
    /// recounts when it removed the longest).
    pub fn sub(&mut self, other: &Tally) {
        let longest = self.longest;
        let mut f = self.fields();
        for (a, b) in f.iter_mut().zip(other.fields()) {
            *a = a.saturating_sub(b);
        }
        *self = Tally::from_fields(f);
        self.longest = if self.calls == 0 { 0 } else { longest };
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|&n| n == 0)
    }

    /// Answer-seizure ratio in percent (answered / calls), `None` without calls.
    pub fn asr_percent(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.answered as f64 * 100.0 / self.calls as f64)
    }

    /// Average call duration of answered calls in seconds, `None` without answered calls.
    /// Unanswered calls bill nothing, so this is billed seconds over answered calls.
    pub fn acd_seconds(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.billsec as f64 / self.answered as f64)
    }

    /// Calls with billed seconds and no archived recording to show for them (never below 0).
    pub fn recordings_missing(&self) -> u64 {
        self.billed_calls.saturating_sub(self.archived)
    }

    /// The stored form.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = VERSION;
        for (i, n) in self.fields().into_iter().enumerate() {
            out[1 + i * 8..9 + i * 8].copy_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// Reads the stored form.
    ///
    /// # Errors
    /// A description of what is wrong, for the store's `Corrupt` error.
    pub fn decode(v: &[u8]) -> Result<Tally, String> {
        if v.len() != ENCODED_LEN || v[0] != VERSION {
            return Err(format!(
                "a rollup of {} bytes (version {:?}) where {ENCODED_LEN} bytes of version \
                 {VERSION} were written",
                v.len(),
                v.first()
            ));
        }
        let mut f = [0u64; FIELDS];
        for (i, n) in f.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[1 + i * 8..9 + i * 8]);
            *n = u64::from_be_bytes(b);
        }
        Ok(Tally::from_fields(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_quarter_hours_before_and_after_the_epoch() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(BUCKET_MS - 1), 0);
        assert_eq!(bucket_of(BUCKET_MS), 1);
        assert_eq!(bucket_of(-1), -1);
    }

    #[test]
    fn sums_minutes_round_up_per_call_and_round_trips() {
        let mut t = Tally::default();
        for (billsec, disp) in [(61u32, "ANSWERED"), (0, "NO ANSWER"), (120, "ANSWERED")] {
            let f = Facts {
                kind: Kind::Cdr,
                at_ms: Some(0),
                raw_time: String::new(),
                direction: "outbound".into(),
                disposition: disp.into(),
                src: String::new(),
                dst: String::new(),
                duration: billsec + 5,
                billsec: Some(billsec),
                callid: String::new(),
            };
            t.add(&Tally::of(&f, false));
        }
        assert_eq!(
            (t.calls, t.answered, t.billsec, t.billed_minutes),
            (3, 2, 181, 4)
        );
        assert_eq!(t.longest, 120);
        assert_eq!(t.recordings_missing(), 2);
        assert!((t.asr_percent().unwrap() - 66.666).abs() < 0.01);
        assert!((t.acd_seconds().unwrap() - 90.5).abs() < 1e-9);
        assert_eq!(Tally::decode(&t.encode()).unwrap(), t);
        assert!(Tally::decode(&t.encode()[1..]).is_err());
    }
}
