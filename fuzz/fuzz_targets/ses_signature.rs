//! The GB/T 38540 `SES_Signature` parser on hostile input: never panics, and whatever it
//! accepts encodes back to exactly the bytes it was given (so a signature covers what was read).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = cert_store::ses::SesSignature::parse(data) {
        assert_eq!(sig.to_der(), data);
    }
});
