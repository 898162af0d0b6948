//! The status-list decoder (zlib + base64url) on hostile input: never panics, never inflates
//! past its cap.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(list) = cert_store::status_list::StatusList::decode_lst(s, 2) {
        for i in [0, list.len().saturating_sub(1), list.len()] {
            let _ = list.get(i);
        }
    }
});
