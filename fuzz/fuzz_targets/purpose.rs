//! The `X-Purpose` parser on hostile input: never panics; a reason never exceeds its limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = gateway::purpose::parse(s) {
        assert!(p.reason.as_ref().is_none_or(|r| r.chars().count() <= gateway::purpose::MAX_REASON_CHARS));
        assert!(p.matter.is_some() || p.reason.is_some());
    }
});
