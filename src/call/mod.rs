//! Calls, not webhooks: the facts of each CDR, recording and SMS ([`facts`]) and the formats
//! of their times ([`calldate`]), the quarter-hour rollups the writer keeps ([`tally`]), the
//! time zone they are shown in ([`zone`]), and the join and groupings of `didgate calls` and
//! `didgate report` ([`report`]). Pure; the store keeps the index (`store/calls.rs`), the CLI
//! draws (`cli/calls.rs`, `cli/report.rs`).

pub mod calldate;
pub mod facts;
pub mod report;
pub mod tally;
pub mod zone;
