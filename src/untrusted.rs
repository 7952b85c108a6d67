//! Text taken from a webhook, shown to a person: which characters must not act.
//!
//! Anyone can send an SMS to the operator's number, so a sender, a DID or a message may hold
//! terminal escape sequences or Unicode direction controls that reorder what follows them
//! (a "Trojan Source" display). The terminal tables (`cli`) and the console (`console`) both
//! replace these characters by a visible one, and share this list so the two agree.

/// Whether `c` changes the direction of the text around it: the embedding, override and
/// isolate controls (U+202A..U+202E, U+2066..U+2069) and the invisible marks (LRM, RLM, ALM).
pub fn is_direction_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_controls_are_caught_and_text_is_not() {
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            assert!(is_direction_control(c), "{:X}", c as u32);
        }
        for c in ['a', 'ש', 'ع', '\u{2029}', '\u{206A}', '\u{202F}', '😀'] {
            assert!(!is_direction_control(c), "{:X}", c as u32);
        }
    }
}
