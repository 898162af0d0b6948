use std::process::Command;

use super::*;

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

fn info() -> SealInfo {
    SealInfo {
        vid: "certgate".into(),
        es_id: "11110105MB0000002F-HT-0001".into(),
        seal_type: 1,
        name: "北京小米科技有限责任公司合同专用章".into(),
        certs: vec![b"signer certificate".to_vec()],
        created: at("2026-11-01T08:00:00Z"),
        valid_start: at("2026-11-01T08:00:00Z"),
        valid_end: at("2029-11-01T08:00:00Z"),
        picture_type: "png".into(),
        picture: vec![0x89, b'P', b'N', b'G', 1, 2, 3],
        width: 40,
        height: 40,
    }
}

fn sealed(alg: JwsAlg, document: &[u8]) -> (SesSignature, SealKey, SealKey) {
    let maker = SealKey::generate(alg).unwrap();
    let signer = SealKey::generate(alg).unwrap();
    let seal = Seal::make(info(), b"maker certificate".to_vec(), &maker).unwrap();
    let to_sign = ToSign {
        seal,
        time: at("2026-11-28T04:00:00Z"),
        data_hash: SesAlg::of(alg).digest(document).unwrap(),
        property: "contract.pdf".into(),
    };
    let sig = SesSignature::sign(to_sign, b"signer certificate".to_vec(), &signer).unwrap();
    (sig, maker, signer)
}

fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok()
}

#[test]
fn round_trip_for_both_algorithms() {
    for alg in [JwsAlg::Sm2Sm3, JwsAlg::Es256] {
        let (sig, maker, signer) = sealed(alg, b"%PDF-1.7 a contract");
        let der = sig.to_der();
        let back = SesSignature::parse(&der).unwrap();
        assert_eq!(back, sig);
        assert!(back.signature_holds(signer.public_key()), "{alg:?}");
        assert!(back.to_sign.seal.maker_signature_holds(maker.public_key()));
        // Keys swapped: neither holds.
        assert!(!back.signature_holds(maker.public_key()));
        assert!(!back.to_sign.seal.maker_signature_holds(signer.public_key()));
        assert_eq!(
            back.to_sign.data_hash,
            SesAlg::of(alg).digest(b"%PDF-1.7 a contract").unwrap()
        );
        assert_ne!(
            back.to_sign.data_hash,
            SesAlg::of(alg).digest(b"%PDF-1.7 a contracT").unwrap()
        );
    }
}

#[test]
fn an_edited_seal_or_time_breaks_a_signature() {
    let (sig, maker, signer) = sealed(JwsAlg::Sm2Sm3, b"doc");
    let mut renamed = sig.clone();
    renamed.to_sign.seal.info.name = "北京小米科技有限责任公司公章".into();
    assert!(
        !renamed
            .to_sign
            .seal
            .maker_signature_holds(maker.public_key())
    );
    assert!(!renamed.signature_holds(signer.public_key()));
    let mut repainted = sig.clone();
    repainted.to_sign.seal.info.picture[4] ^= 1;
    assert!(
        !repainted
            .to_sign
            .seal
            .maker_signature_holds(maker.public_key())
    );
    let mut later = sig;
    later.to_sign.time = at("2027-01-01T00:00:00Z");
    assert!(!later.signature_holds(signer.public_key()));
}

#[test]
fn truncated_malformed_and_oversized_input_is_refused_without_panic() {
    let (sig, _, _) = sealed(JwsAlg::Es256, b"doc");
    let der = sig.to_der();
    for n in 0..der.len() {
        assert!(
            SesSignature::parse(&der[..n]).is_err(),
            "prefix of {n} bytes"
        );
    }
    let mut longer = der.clone();
    longer.push(0);
    assert!(matches!(
        SesSignature::parse(&longer),
        Err(SesError::Malformed(_))
    ));
    // Every single-byte change either fails to parse or parses to something else.
    for i in 0..der.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = der.clone();
            bad[i] ^= flip;
            if let Ok(other) = SesSignature::parse(&bad) {
                assert_ne!(other, sig, "byte {i}");
            }
        }
    }
    let huge = vec![0x30u8; MAX_SES_BYTES + 1];
    assert_eq!(
        SesSignature::parse(&huge),
        Err(SesError::TooLarge(MAX_SES_BYTES + 1))
    );
    assert!(SesSignature::parse(b"").is_err());
    assert!(SesSignature::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
}

#[test]
fn openssl_reads_the_structure_and_verifies_the_sm2_signature() {
    if !openssl_available() {
        eprintln!("SKIPPED: the openssl command is not installed");
        return;
    }
    let (sig, _, signer) = sealed(JwsAlg::Sm2Sm3, b"%PDF-1.7 a contract");
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("ses.der"), sig.to_der()).unwrap();
    let out = Command::new("openssl")
        .args(["asn1parse", "-inform", "DER", "-in"])
        .arg(path("ses.der"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for field in [
        ":ES",                         // header ID
        ":certgate",                   // Vid
        ":11110105MB0000002F-HT-0001", // esID
        "UTF8STRING",                  // the seal's name
        ":20261101080000Z",            // createDate / validStart
        ":20291101080000Z",            // validEnd
        ":png",                        // picture type
        ":20261128040000Z",            // timeInfo
        ":contract.pdf",               // propertyInfo
        "BIT STRING",                  // dataHash, signatures
    ] {
        assert!(text.contains(field), "{field} not in:\n{text}");
    }
    assert!(
        text.contains("SM2-with-SM3") || text.contains("1.2.156.10197.1.501"),
        "{text}"
    );
    // The DER of TBS_Sign as OpenSSL finds it: the first element of the outer sequence.
    let first = text
        .lines()
        .find(|l| l.contains("d=1"))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .trim()
        .to_owned();
    let out = Command::new("openssl")
        .args(["asn1parse", "-inform", "DER", "-noout", "-in"])
        .arg(path("ses.der"))
        .args(["-strparse", &first, "-out"])
        .arg(path("tbs.der"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(path("tbs.der")).unwrap(),
        sig.to_sign.to_der()
    );
    let tbs = std::fs::read(path("tbs.der")).unwrap();
    let (ok, printed) = crate::crypto::openssl_sm2_verify(&signer, &sig.signature, &tbs);
    assert!(
        ok,
        "openssl rejected the SM2 signature over TBS_Sign: {printed}"
    );
    let mut other = tbs;
    let last = other.len() - 1;
    other[last] ^= 1;
    assert!(!crate::crypto::openssl_sm2_verify(&signer, &sig.signature, &other).0);
}

/// What `fuzz/fuzz_targets/ses_signature.rs` checks, run on stable in every test run: 20,000
/// mutations of a valid signature (bytes flipped, inserted, removed, ranges repeated, cut)
/// never panic the parser, and whatever it accepts encodes back to the same bytes.
#[test]
fn mutated_signatures_never_panic_the_parser() {
    let (sig, _, _) = sealed(JwsAlg::Sm2Sm3, b"doc");
    let valid = sig.to_der();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut data = valid.clone();
        for _ in 0..1 + next() % 4 {
            let len = data.len().max(1);
            let at = (next() as usize) % len;
            match next() % 5 {
                0 if !data.is_empty() => data[at] ^= 1 << (next() % 8),
                1 => data.insert(at.min(data.len()), next() as u8),
                2 if !data.is_empty() => {
                    data.remove(at);
                }
                3 => {
                    let end = (at + (next() as usize) % 16).min(data.len());
                    let chunk = data[at.min(end)..end].to_vec();
                    data.splice(at.min(data.len())..at.min(data.len()), chunk);
                }
                _ => data.truncate(at),
            }
        }
        if let Ok(parsed) = SesSignature::parse(&data) {
            assert_eq!(parsed.to_der(), data);
            accepted += 1;
        }
    }
    // Almost every mutation breaks the structure; the few that do not are other signatures.
    assert!(accepted < 20_000);
}
