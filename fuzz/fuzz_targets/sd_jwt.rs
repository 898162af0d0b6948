//! The SD-JWT / JWS parser on hostile input: never panics; a key resolver that refuses every
//! key means nothing may ever verify.
#![no_main]
use cert_store::sdjwt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = cert_store::jws::parse_compact(s, Some("dc+sd-jwt"));
    let result = sdjwt::verify(s, &|_| Err("no key".to_owned()));
    assert!(result.is_err());
    let _ = sdjwt::select(s, &|_| true);
    let _ = cert_store::service::decode_disclosures(s);
});
