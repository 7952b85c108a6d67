//! What each rule said last, and since when: the runner's memory and the file
//! `DATA/alerts.json` that `didgate alerts` reads (written whole, atomically, after every
//! evaluation; mode 0640 like the store, so the `didgate` group may read it).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::rule::{Finding, Rule, Trigger};

/// One rule's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// The rule's `type`.
    #[serde(rename = "type")]
    pub rule_type: String,
    /// Whether it is firing.
    pub firing: bool,
    /// When it last started firing or cleared, ms (0: never changed since it was added).
    pub since_ms: i64,
    /// The last evaluation's sentence.
    pub summary: String,
    /// The calls behind the firing (empty when not firing).
    pub calls: Vec<Trigger>,
    /// When it was last evaluated, ms.
    pub evaluated_ms: i64,
}

/// A change worth a log line and a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// It started firing.
    Firing,
    /// It stopped, having fired for `fired_ms`.
    Cleared {
        /// How long it fired.
        fired_ms: i64,
    },
}

impl RuleState {
    /// The state after `finding`, and the transition if there is one.
    pub fn next(
        previous: Option<&RuleState>,
        rule: &Rule,
        finding: &Finding,
        now_ms: i64,
    ) -> (RuleState, Option<Transition>) {
        let was = previous.is_some_and(|p| p.firing);
        let transition = match (was, finding.firing) {
            (false, true) => Some(Transition::Firing),
            (true, false) => Some(Transition::Cleared {
                fired_ms: now_ms - previous.map_or(now_ms, |p| p.since_ms),
            }),
            _ => None,
        };
        let since_ms = match (transition, previous) {
            (Some(_), _) => now_ms,
            (None, Some(p)) => p.since_ms,
            (None, None) => 0,
        };
        let state = RuleState {
            rule_type: rule.check.type_name().to_string(),
            firing: finding.firing,
            since_ms,
            summary: finding.summary.clone(),
            calls: finding.calls.clone(),
            evaluated_ms: now_ms,
        };
        (state, transition)
    }
}

/// Every rule's state, as the file holds it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the runner last evaluated, ms.
    pub evaluated_at_ms: i64,
    /// Its interval, ms (a reader calls the file stale after a few).
    pub interval_ms: i64,
    /// The zone hours and days were judged in.
    pub timezone: String,
    /// By rule name.
    pub rules: BTreeMap<String, RuleState>,
}

impl Snapshot {
    /// Reads the file; `None` when it is missing or unreadable (a new state starts).
    pub fn load(path: &Path) -> Option<Snapshot> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps the states of rules that still exist with the same type.
    pub fn retain(&mut self, rules: &[Rule]) {
        self.rules.retain(|name, st| {
            rules
                .iter()
                .any(|r| &r.name == name && r.check.type_name() == st.rule_type)
        });
    }

    /// Writes the file atomically: a temporary file, fsync, rename over it.
    ///
    /// # Errors
    /// Any I/O failure; the temporary file is removed.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::durable_file::replace(path, &bytes, 0o640)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::rule::Check;

    #[test]
    fn transitions_happen_once_and_keep_their_time() {
        let rule = Rule {
            name: "r".into(),
            check: Check::Silence {
                kind: crate::call::facts::Kind::Cdr,
                duration: std::time::Duration::from_secs(60),
            },
            schedule: None,
            notify_url: None,
        };
        let f = |firing| Finding {
            firing,
            summary: String::new(),
            calls: vec![],
        };
        let (a, t) = RuleState::next(None, &rule, &f(false), 10);
        assert_eq!((t, a.since_ms), (None, 0));
        let (b, t) = RuleState::next(Some(&a), &rule, &f(true), 20);
        assert_eq!((t, b.since_ms), (Some(Transition::Firing), 20));
        let (c, t) = RuleState::next(Some(&b), &rule, &f(true), 80);
        assert_eq!((t, c.since_ms), (None, 20));
        let (d, t) = RuleState::next(Some(&c), &rule, &f(false), 140);
        assert_eq!(
            (t, d.since_ms),
            (Some(Transition::Cleared { fired_ms: 120 }), 140)
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("alerts.json");
        let mut s = Snapshot::default();
        s.rules.insert("r".into(), d);
        s.save(&p).unwrap();
        assert_eq!(Snapshot::load(&p), Some(s));
    }
}
