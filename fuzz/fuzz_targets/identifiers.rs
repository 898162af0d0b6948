//! USCC, citizen id, holder id and licence identifier parsers: never panic, and whatever
//! parses prints back to the same text.
#![no_main]
use cert_store::licence_id::LicenceId;
use cert_store::{CitizenId, HolderId, Uscc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(u) = s.parse::<Uscc>() {
        assert_eq!(u.as_str(), s);
    }
    if let Ok(c) = s.parse::<CitizenId>() {
        assert_eq!(c.as_str(), s);
    }
    let _ = s.parse::<HolderId>();
    if let Ok(id) = s.parse::<LicenceId>() {
        assert_eq!(id.as_str(), s);
    }
});
