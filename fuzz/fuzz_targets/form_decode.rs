//! Property: the hand-rolled form decoder agrees with the `form_urlencoded` crate (the WHATWG
//! reference implementation in Rust) on every input, pair for pair, both as borrowed pairs and
//! as the owned `Form` the reader renders from.
#![no_main]

use didgate::ingest::decode::form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ours: Vec<(String, String)> = form::parse(data)
        .map(|(n, v)| (form::into_string(n), form::into_string(v)))
        .collect();
    let theirs: Vec<(String, String)> = form_urlencoded::parse(data)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(ours, theirs);
    let owned = form::Form::decode(data);
    let theirs_str = theirs.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    assert!(owned.pairs().eq(theirs_str));
    assert_eq!(form::has_named_field(data), theirs.iter().any(|(n, _)| !n.is_empty()));
});
