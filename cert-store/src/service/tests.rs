// Tests of the licence service: issuance and verification round trips, forged credentials
// signed with real seal keys, x5c problems, seal revocation, the licence lifecycle, status
// list tokens, issuance refusals, consents and show-codes.

use crate::service::*;
use crate::licence::{FieldKind, FieldSpec};

const NOW: i64 = 1_800_000_000;
const MARKET: &str = "11110105MB0000002F";
const APPROVAL: &str = "11110105MB0000001C";
const BUSINESS: &str = "11100000MB0000100D001";
const FOOD: &str = "11100000MB0000100D002";
const HOLDER: &str = "91110108551385082Q";
const OTHER_HOLDER: &str = "9144030071526726XG";
const STATUS_BASE: &str = "https://gw.example/v1/status-lists";

struct Fixture {
    svc: LicenceService,
    _schema: Option<crate::pg_store::SchemaGuard>,
    market: Uscc,
    approval: Uscc,
    sm2: SealRecord,
    es256: SealRecord,
}

fn uscc(s: &str) -> Uscc {
    s.parse().unwrap()
}

fn field(name: &str, kind: FieldKind, required: bool) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        kind,
        required, min: None,
    }
}

fn types() -> Vec<LicenceType> {
    vec![
        LicenceType {
            code: BUSINESS.parse().unwrap(),
            name: "营业执照".into(),
            issuers: [uscc(MARKET)].into(),
            fields: vec![
                field("name", FieldKind::String, true),
                field("legal_representative", FieldKind::String, true),
                field("established", FieldKind::Date, false),
            ],
            validity_days: 3650,
            consent_required: false,
            one_per_holder: false,
            business_licence: true,
        },
        LicenceType {
            code: FOOD.parse().unwrap(),
            name: "食品经营许可证".into(),
            issuers: [uscc(APPROVAL)].into(),
            fields: vec![
                field("licence_class", FieldKind::String, true),
                field("outlets", FieldKind::Integer, false),
            ],
            validity_days: 1825,
            consent_required: true,
            one_per_holder: true,
            business_licence: false,
        },
    ]
}

/// The fixture on this module's backend; `None` when the backend is not available here.
#[track_caller]
fn fixture() -> Option<Fixture> {
    fixture_with(types())
}

/// The fixture with other licence types.
#[track_caller]
fn fixture_with(types: Vec<LicenceType>) -> Option<Fixture> {
    let (store, schema) = backend(std::panic::Location::caller().to_string().as_str())?;
    let svc = LicenceService::open(
        store,
        Kek::generate().unwrap(),
        types,
        STATUS_BASE,
        NOW,
        crate::cache::DEFAULT_CACHE_BYTES,
    )
    .unwrap();
    let market = uscc(MARKET);
    let approval = uscc(APPROVAL);
    let sm2 = svc
        .seals().create_seal(department(&market), "公章", JwsAlg::Sm2Sm3, None, NOW)
        .unwrap();
    let es256 = svc
        .seals().create_seal(department(&market), "登记专用章", JwsAlg::Es256, None, NOW)
        .unwrap();
    Some(Fixture {
        svc,
        _schema: schema,
        market,
        approval,
        sm2,
        es256,
    })
}

/// A department of the fixture as a seal owner, with its full name.
fn department(id: &Uscc) -> SealOwner<'_> {
    SealOwner::Department {
        id,
        full_name: if id.as_str() == MARKET {
            "某区市场监督管理局"
        } else {
            "某区行政审批局"
        },
    }
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn business_fields() -> Map<String, Value> {
    obj(json!({
        "name": "小米科技有限责任公司",
        "legal_representative": "雷军",
        "established": "2010-03-03",
    }))
}

fn request(seal: &SealRecord) -> IssueRequest {
    IssueRequest {
        licence_type: BUSINESS.into(),
        holder_id: HOLDER.into(),
        holder_name: "小米科技有限责任公司".into(),
        seal_id: seal.id.clone(),
        fields: business_fields(),
        valid_from: None,
        valid_until: None,
        serial: None,
    }
}

fn issue(f: &Fixture, seal: &SealRecord) -> LicenceRecord {
    f.svc.issuance().issue(&f.market, &request(seal), NOW).unwrap()
}

/// Asserts the report is invalid, every check but the last passed, and the last is `check`
/// failing with a detail containing `fragment`.
fn assert_fails(report: &VerifyReport, check: &str, fragment: &str) {
    assert!(!report.valid, "{report:#?}");
    let (last, before) = report.checks.split_last().expect("at least one check");
    assert!(before.iter().all(|c| c.ok), "{report:#?}");
    assert_eq!(last.check, check, "{report:#?}");
    assert!(!last.ok, "{report:#?}");
    assert!(
        last.detail.contains(fragment),
        "detail {:?} lacks {fragment:?}",
        last.detail
    );
}

fn assert_valid(report: &VerifyReport) {
    assert!(report.valid, "{report:#?}");
    assert!(report.checks.iter().all(|c| c.ok), "{report:#?}");
    let names: Vec<&str> = report.checks.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(
        names,
        [
            "typ",
            "certificate_chain",
            "signature",
            "vct",
            "seal",
            "time",
            "status",
            "disclosures"
        ]
    );
}

fn der_b64(cert: &X509) -> String {
    b64std(&cert.to_der().unwrap())
}

fn x5c_of(seal: &SealRecord, ca: &X509) -> Vec<String> {
    let cert = X509::from_pem(seal.certificate_pem.as_bytes()).unwrap();
    vec![der_b64(&cert), der_b64(ca)]
}

/// A header like the service's for `seal`.
fn seal_header(f: &Fixture, seal: &SealRecord) -> JwsHeader {
    JwsHeader {
        alg: seal.alg,
        typ: Some(sdjwt::SD_JWT_TYP.into()),
        kid: Some(seal.id.clone()),
        x5c: Some(x5c_of(seal, f.svc.seal_ca.certificate())),
    }
}

/// The plain claims of `licence`, as the service signed them (taken from its credential).
fn plain_of(licence: &LicenceRecord) -> Map<String, Value> {
    let jwt = licence.sd_jwt.split('~').next().unwrap();
    let mut claims = jws::parse_compact(jwt, Some(sdjwt::SD_JWT_TYP))
        .unwrap()
        .payload;
    claims.remove("_sd");
    claims.remove("_sd_alg");
    claims
}

fn holder_claims() -> Map<String, Value> {
    let mut d = business_fields();
    d.insert("holder_id".into(), json!(HOLDER));
    d.insert("holder_name".into(), json!("小米科技有限责任公司"));
    d
}

fn forge(
    header: JwsHeader,
    plain: Map<String, Value>,
    disclosable: &Map<String, Value>,
    key: &SealKey,
) -> String {
    sdjwt::issue(header, plain, disclosable, &mut sdjwt::OsSalts, key)
        .unwrap()
        .sd_jwt
}

/// A credential forged with the real seal key from `licence`'s claims after `edit`.
fn forge_with(
    f: &Fixture,
    licence: &LicenceRecord,
    edit: impl FnOnce(&mut Map<String, Value>, &mut Map<String, Value>),
) -> String {
    let seal = f.svc.seals().seal(&licence.seal_id).unwrap();
    let key = f.svc.seal_key(&seal).unwrap();
    let mut plain = plain_of(licence);
    let mut disclosable = holder_claims();
    edit(&mut plain, &mut disclosable);
    forge(seal_header(f, &seal), plain, &disclosable, &key)
}

// ---- round trips ----

fn round_trip(alg: JwsAlg) {
    let Some(f) = fixture() else { return };
    let seal = if alg == JwsAlg::Sm2Sm3 {
        &f.sm2
    } else {
        &f.es256
    };
    let licence = issue(&f, seal);
    assert_eq!(licence.status, LicenceStatus::Valid);
    // The serial is the issuance time (9 base-36 characters of Unix milliseconds) and 16
    // random base-36 characters: identifiers cannot be counted through.
    let serial = licence.id.serial().to_owned();
    assert_eq!(serial.len(), 25, "{}", licence.id);
    assert!(serial.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
    let millis = u128::from_str_radix(&serial[..9], 36).unwrap();
    let now_ms = u128::try_from(storage::clock::unix_now_ms()).unwrap();
    assert!(millis <= now_ms && now_ms - millis < 60_000, "{serial} at {now_ms}");
    let next = issue(&f, seal).id;
    assert_ne!(next, licence.id);
    assert_ne!(next.serial()[9..], serial[9..], "the random part is drawn anew");

    let report = f.svc.verification().verify(&licence.sd_jwt, NOW);
    assert_valid(&report);
    assert_eq!(report.licence_id.as_deref(), Some(licence.id.as_str()));
    assert_eq!(report.status, Some(LicenceStatus::Valid));
    assert_eq!(report.disclosed, holder_claims());
    assert_eq!(report.claims["vct"], json!(BUSINESS));
    assert_eq!(
        report.claims["iss"],
        json!(format!("urn:certgate:dept:{MARKET}"))
    );
    assert!(report.checks[2].detail.starts_with(alg.name()));

    let presented = f
        .svc
        .verification().present(&licence, &|n| n == "name" || n == "holder_id")
        .unwrap();
    let report = f.svc.verification().verify(&presented, NOW);
    assert_valid(&report);
    assert_eq!(
        report.disclosed,
        obj(json!({"name": "小米科技有限责任公司", "holder_id": HOLDER}))
    );
    assert_eq!(decode_disclosures(&presented), report.disclosed);
}

#[test]
fn round_trip_sm2() {
    round_trip(JwsAlg::Sm2Sm3);
}

#[test]
fn round_trip_es256() {
    round_trip(JwsAlg::Es256);
}

#[test]
fn forged_control_with_unchanged_claims_verifies() {
    // The forging helper itself produces a valid credential: each forgery below differs
    // from it only by the defect under test.
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let cred = forge_with(&f, &licence, |_, _| {});
    assert_valid(&f.svc.verification().verify(&cred, NOW));
}

// ---- forged credentials signed with the real seal key ----

#[test]
fn forged_without_exp_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let cred = forge_with(&f, &licence, |p, _| {
        p.remove("exp");
    });
    assert_fails(&f.svc.verification().verify(&cred, NOW), "time", "no expiry time (`exp`)");
}

#[test]
fn forged_with_unknown_vct_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let cred = forge_with(&f, &licence, |p, _| {
        p.insert("vct".into(), json!("11100000MB0000100D999"));
    });
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "vct",
        "unknown licence type `11100000MB0000100D999`",
    );
}

#[test]
fn forged_not_yet_valid_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let cred = forge_with(&f, &licence, |p, _| {
        p.insert("nbf".into(), json!(NOW + 3600));
    });
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "time",
        &format!("not valid before {}", NOW + 3600),
    );
}

#[test]
fn forged_expired_is_refused_after_expiry() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let cred = forge_with(&f, &licence, |p, _| {
        p.insert("exp".into(), json!(NOW + 100));
    });
    assert_valid(&f.svc.verification().verify(&cred, NOW));
    assert_fails(
        &f.svc.verification().verify(&cred, NOW + 1000),
        "time",
        &format!("expired at {}", NOW + 100),
    );
}

#[test]
fn forged_disclosure_outside_the_type_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let cred = forge_with(&f, &licence, |_, d| {
        d.insert("colour".into(), json!("red"));
    });
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "disclosures",
        "disclosure `colour` is not a field of 营业执照",
    );
}

#[test]
fn forged_iss_smuggled_in_a_disclosure_is_refused() {
    // sdjwt::issue refuses to make `iss` disclosable, so build the credential by hand.
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let key = f.svc.seal_key(&f.es256).unwrap();
    let mut payload = plain_of(&licence);
    payload.remove("iss");
    let disclosure =
        jws::b64url(json!(["c2FsdHNhbHRzYWx0c2FsdA", "iss", "urn:certgate:dept:evil"]).to_string());
    let digest = jws::b64url(Sha256::digest(disclosure.as_bytes()));
    payload.insert("_sd_alg".into(), json!("sha-256"));
    payload.insert("_sd".into(), json!([digest]));
    let jwt = jws::sign_compact(&seal_header(&f, &f.es256), &Value::Object(payload), &key).unwrap();
    let cred = format!("{jwt}~{disclosure}~");
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "disclosures",
        "tries to set the reserved claim `iss`",
    );
}

#[test]
fn forged_by_another_departments_seal_is_refused() {
    // APPROVAL's own, valid seal signs a business licence (a type only MARKET may issue)
    // claiming to come from MARKET and borrowing a real licence's status entry.
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let theirs = f
        .svc
        .seals().create_seal(department(&f.approval), "公章", JwsAlg::Es256, None, NOW)
        .unwrap();
    let key = f.svc.seal_key(&theirs).unwrap();
    let mut fields = holder_claims();
    fields.insert("legal_representative".into(), json!("冒名者"));
    let cred = forge(seal_header(&f, &theirs), plain_of(&licence), &fields, &key);
    assert_fails(&f.svc.verification().verify(&cred, NOW), "seal", APPROVAL);

    // Claiming its own department as `iss` does not help: it may not issue the type.
    let mut plain = plain_of(&licence);
    plain.insert("iss".into(), json!(format!("urn:certgate:dept:{APPROVAL}")));
    let cred = forge(seal_header(&f, &theirs), plain, &fields, &key);
    assert_fails(&f.svc.verification().verify(&cred, NOW), "seal", "may not issue 营业执照");
}

#[test]
fn forged_with_another_seal_of_the_issuer_borrowing_a_status_entry_is_refused() {
    // The issuer's ES256 seal signs a credential pointing at the licence its SM2 seal
    // signed: the register says which seal signed that licence.
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let key = f.svc.seal_key(&f.es256).unwrap();
    let cred = forge(
        seal_header(&f, &f.es256),
        plain_of(&licence),
        &holder_claims(),
        &key,
    );
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "status",
        "does not belong to this licence",
    );
}

// ---- x5c problems ----

fn ca_time(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).unwrap()
}

#[test]
fn self_signed_x5c_leaf_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let rogue = SealCa::create("certgate seal CA", ca_time(NOW), 365).unwrap();
    let header = JwsHeader {
        x5c: Some(vec![der_b64(rogue.certificate())]),
        ..seal_header(&f, &f.es256)
    };
    let cred = forge(header, plain_of(&licence), &holder_claims(), rogue.key());
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "certificate_chain",
        "does not chain to the seal CA",
    );
}

#[test]
fn seal_certificate_from_a_foreign_ca_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let foreign = SealCa::create("certgate seal CA", ca_time(NOW), 365).unwrap();
    let key = SealKey::generate(JwsAlg::Es256).unwrap();
    let cert = foreign
        .issue_seal_certificate(
            key.public_key(),
            &f.market,
            "某区市场监督管理局",
            ca_time(NOW - 3600),
            ca_time(NOW + 86400),
        )
        .unwrap();
    let header = JwsHeader {
        x5c: Some(vec![der_b64(&cert), der_b64(foreign.certificate())]),
        ..seal_header(&f, &f.es256)
    };
    let cred = forge(header, plain_of(&licence), &holder_claims(), &key);
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "certificate_chain",
        "does not chain to the seal CA",
    );
}

#[test]
fn missing_x5c_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let key = f.svc.seal_key(&f.es256).unwrap();
    let header = JwsHeader {
        x5c: None,
        ..seal_header(&f, &f.es256)
    };
    let cred = forge(header, plain_of(&licence), &holder_claims(), &key);
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "certificate_chain",
        "x5c is missing",
    );
}

#[test]
fn kid_of_another_seal_with_the_real_x5c_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let key = f.svc.seal_key(&f.es256).unwrap();
    let header = JwsHeader {
        kid: Some(f.sm2.id.clone()),
        ..seal_header(&f, &f.es256)
    };
    let cred = forge(header, plain_of(&licence), &holder_claims(), &key);
    assert_fails(
        &f.svc.verification().verify(&cred, NOW),
        "certificate_chain",
        &format!("x5c leaf is not the certificate of seal {}", f.sm2.id),
    );
}

// ---- seal revocation ----

#[test]
fn revoked_seal_fails_from_the_revocation_time() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let revoked = f
        .svc
        .seals().revoke_seal(&f.sm2.id, &f.market, "key compromised", NOW + 10)
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW + 10));
    assert_valid(&f.svc.verification().verify(&licence.sd_jwt, NOW + 5));
    assert_fails(&f.svc.verification().verify(&licence.sd_jwt, NOW + 20), "seal", "revoked");
    // A revoked seal cannot issue, another department cannot revoke, twice is a conflict.
    assert!(matches!(
        f.svc.issuance().issue(&f.market, &request(&f.sm2), NOW + 20),
        Err(ServiceError::Invalid { field, .. }) if field == "seal_id"
    ));
    assert!(matches!(
        f.svc.seals().revoke_seal(&f.es256.id, &f.approval, "no", NOW),
        Err(ServiceError::Forbidden(_))
    ));
    assert!(matches!(
        f.svc.seals().revoke_seal(&f.sm2.id, &f.market, "again", NOW + 30),
        Err(ServiceError::Conflict(_))
    ));
}

// ---- lifecycle ----

#[test]
fn verification_from_memory_only_when_every_record_is_there_and_cheap() {
    let Some(f) = fixture() else { return };
    let es256 = issue(&f, &f.es256);
    let v = f.svc.verification();
    // The licence has not been read since it was issued: the status needs the store.
    assert!(v.verify_in_memory(&es256.sd_jwt, NOW).is_none());
    assert_valid(&v.verify(&es256.sd_jwt, NOW));
    let from_memory = v.verify_in_memory(&es256.sd_jwt, NOW).expect("both records in memory");
    assert_eq!(from_memory, v.verify(&es256.sd_jwt, NOW));
    // A change forgets the licence: never an answer from before it.
    f.svc
        .issuance()
        .change_status(es256.id.as_str(), &f.market, Lifecycle::Suspend, "inspection")
        .unwrap();
    // (The change answers with the licence read again, so the new status is in memory.)
    let report = v.verify_in_memory(&es256.sd_jwt, NOW).expect("re-read after the change");
    assert_fails(&report, "status", "suspended");
    assert_fails(&v.verify(&es256.sd_jwt, NOW), "status", "suspended");
    // SM2 is too slow for the async thread: never verified from memory.
    let sm2 = issue(&f, &f.sm2);
    assert_valid(&v.verify(&sm2.sd_jwt, NOW));
    assert!(v.verify_in_memory(&sm2.sd_jwt, NOW).is_none());
}

#[test]
fn issuing_from_memory_needs_every_record_there_and_ends_as_issue_does() {
    let Some(f) = fixture() else { return };
    let iss = f.svc.issuance();
    // Nothing read yet: the seal and the open status list are not in memory.
    assert!(iss.prepare_in_memory(&f.market, &request(&f.es256), NOW).unwrap().is_none());
    let first = issue(&f, &f.es256);
    let shared = !iss.queues_inserts();
    let prepared = iss.prepare_in_memory(&f.market, &request(&f.es256), NOW).unwrap();
    if shared {
        // Other nodes fill the status lists too: a shared store is always read.
        assert!(prepared.is_none());
        return;
    }
    // An asked-for serial is checked against the store before signing.
    let asked = IssueRequest {
        serial: Some("ASKED1".into()),
        ..request(&f.es256)
    };
    assert!(iss.prepare_in_memory(&f.market, &asked, NOW).unwrap().is_none());
    // Refusals come from memory as from the store.
    let foreign = iss.prepare_in_memory(&f.approval, &request(&f.es256), NOW);
    assert!(matches!(foreign, Err(ServiceError::Forbidden(_))), "{foreign:?}");

    // Queued to the store's writer and settled: issued, stored, verifiable.
    let (tx, rx) = std::sync::mpsc::channel();
    iss.queue(prepared.unwrap(), move |p, stored| tx.send((p, stored)).unwrap());
    let (p, stored) = rx.recv().unwrap();
    let Settled::Issued(licence) = iss.settle(p, stored).unwrap() else {
        panic!("a fresh slot and serial were taken");
    };
    let licence = *licence;
    assert_ne!(licence.id, first.id);
    assert_eq!(f.svc.licence(licence.id.as_str()).unwrap().sd_jwt, licence.sd_jwt);
    assert_valid(&f.svc.verification().verify(&licence.sd_jwt, NOW));

    // The same licence queued again: its identifier is taken, so a drawn serial draws anew.
    let again = Prepared::for_test(licence.clone(), true);
    let (tx, rx) = std::sync::mpsc::channel();
    iss.queue(again, move |p, stored| tx.send((p, stored)).unwrap());
    let (p, stored) = rx.recv().unwrap();
    assert!(matches!(stored, Err(crate::store::StoreError::Conflict(_))));
    assert!(matches!(iss.settle(p, stored).unwrap(), Settled::Again));
    // An asked-for one that exists is a conflict.
    let (tx, rx) = std::sync::mpsc::channel();
    iss.queue(Prepared::for_test(licence, false), move |p, stored| {
        tx.send((p, stored)).unwrap()
    });
    let (p, stored) = rx.recv().unwrap();
    assert!(matches!(iss.settle(p, stored), Err(ServiceError::Conflict(_))));
}

#[test]
fn suspend_resume_revoke() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let id = licence.id.as_str();

    let s = f
        .svc
        .issuance().change_status(id, &f.market, Lifecycle::Suspend, "inspection")
        .unwrap();
    assert_eq!(s.status, LicenceStatus::Suspended);
    let report = f.svc.verification().verify(&licence.sd_jwt, NOW);
    assert_fails(&report, "status", "suspended");
    assert_eq!(report.status, Some(LicenceStatus::Suspended));

    f.svc
        .issuance().change_status(id, &f.market, Lifecycle::Resume, "inspection passed")
        .unwrap();
    assert_valid(&f.svc.verification().verify(&licence.sd_jwt, NOW));

    assert!(matches!(
        f.svc
            .issuance().change_status(id, &f.approval, Lifecycle::Revoke, "not ours"),
        Err(ServiceError::Forbidden(_))
    ));
    f.svc
        .issuance().change_status(id, &f.market, Lifecycle::Revoke, "closed")
        .unwrap();
    assert_fails(&f.svc.verification().verify(&licence.sd_jwt, NOW), "status", "revoked");
    assert!(matches!(
        f.svc
            .issuance().change_status(id, &f.market, Lifecycle::Revoke, "closed again"),
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        f.svc
            .issuance().change_status(id, &f.market, Lifecycle::Resume, "undo"),
        Err(ServiceError::Conflict(_))
    ));
}

#[test]
fn renew_revokes_the_old_licence_and_links_the_new() {
    let Some(f) = fixture() else { return };
    let old = issue(&f, &f.es256);
    assert!(matches!(
        f.svc.issuance().renew(old.id.as_str(), &f.approval, None, None, NOW + 100),
        Err(ServiceError::Forbidden(_))
    ));
    let new = f
        .svc
        .issuance().renew(old.id.as_str(), &f.market, None, None, NOW + 100)
        .unwrap();
    assert_ne!(new.id, old.id);
    let old_parsed: LicenceId = old.id.clone();
    let new_parsed: LicenceId = new.id.clone();
    assert_eq!(new_parsed.serial(), old_parsed.serial());
    assert_eq!(new_parsed.version(), 2);
    assert!(new.id.as_str().contains(".002."), "{}", new.id);
    assert_eq!(new.replaces.as_ref(), Some(&old.id));
    assert_eq!(new.fields, old.fields);

    let old_now = f.svc.licence(old.id.as_str()).unwrap();
    assert_eq!(old_now.status, LicenceStatus::Revoked);
    assert_eq!(old_now.replaced_by.as_ref(), Some(&new.id));

    let report = f.svc.verification().verify(&new.sd_jwt, NOW + 100);
    assert_valid(&report);
    assert_eq!(report.disclosed, holder_claims());
    assert_fails(&f.svc.verification().verify(&old.sd_jwt, NOW + 100), "status", "revoked");
    assert!(matches!(
        f.svc.issuance().renew(old.id.as_str(), &f.market, None, None, NOW + 200),
        Err(ServiceError::Conflict(_))
    ));
}

// ---- status list token ----

#[test]
fn status_list_token_reflects_every_licence() {
    let Some(f) = fixture() else { return };
    let revoked = issue(&f, &f.sm2);
    let suspended = issue(&f, &f.es256);
    let valid = issue(&f, &f.sm2);
    f.svc
        .issuance().change_status(revoked.id.as_str(), &f.market, Lifecycle::Revoke, "closed")
        .unwrap();
    f.svc
        .issuance().change_status(suspended.id.as_str(), &f.market, Lifecycle::Suspend, "inspection")
        .unwrap();
    for l in [&revoked, &suspended, &valid] {
        assert_eq!(l.status_list, 0);
    }

    let token = f.svc.issuance().status_list_token(0, NOW).unwrap();
    let parsed = jws::parse_compact(&token, Some("statuslist+jwt")).unwrap();
    parsed.verify(f.svc.signing_key.public_key()).unwrap();
    assert_eq!(
        parsed.header.kid.as_deref(),
        Some(f.svc.signing_kid.as_str())
    );
    // Another key does not verify it.
    let other = SealKey::generate(JwsAlg::Es256).unwrap();
    assert!(parsed.verify(other.public_key()).is_err());

    let payload = &parsed.payload;
    assert_eq!(payload["sub"], json!(format!("{STATUS_BASE}/0")));
    assert_eq!(payload["iat"], json!(NOW));
    assert_eq!(payload["ttl"], json!(STATUS_LIST_TTL));
    assert_eq!(payload["status_list"]["bits"], json!(2));
    let lst = payload["status_list"]["lst"].as_str().unwrap();
    let list = StatusList::decode_lst(lst, 2).unwrap();
    assert!(list.len() >= 131_072, "{}", list.len());

    let expected: BTreeMap<usize, Status> = [
        (revoked.status_index as usize, Status::Revoked),
        (suspended.status_index as usize, Status::Suspended),
        (valid.status_index as usize, Status::Valid),
    ]
    .into();
    assert_eq!(expected.len(), 3, "distinct indexes");
    for i in 0..list.len() {
        let want = expected.get(&i).copied().unwrap_or(Status::Valid);
        assert_eq!(list.get(i).unwrap(), want, "index {i}");
    }

    assert!(matches!(
        f.svc.issuance().status_list_token(1, NOW),
        Err(ServiceError::NotFound(_))
    ));
}

// ---- issuance refusals ----

fn invalid_field(result: Result<LicenceRecord, ServiceError>) -> (String, String) {
    match result {
        Err(ServiceError::Invalid { field, reason }) => (field, reason),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn issuing_a_type_the_department_may_not_issue_is_forbidden() {
    let Some(f) = fixture() else { return };
    let req = IssueRequest {
        licence_type: FOOD.into(),
        fields: obj(json!({"licence_class": "A"})),
        ..request(&f.sm2)
    };
    assert!(matches!(
        f.svc.issuance().issue(&f.market, &req, NOW),
        Err(ServiceError::Forbidden(m)) if m.contains("may not issue 食品经营许可证")
    ));
}

#[test]
fn issuing_with_another_departments_seal_is_forbidden() {
    let Some(f) = fixture() else { return };
    let theirs = f
        .svc
        .seals().create_seal(department(&f.approval), "公章", JwsAlg::Sm2Sm3, None, NOW)
        .unwrap();
    assert!(matches!(
        f.svc.issuance().issue(&f.market, &request(&theirs), NOW),
        Err(ServiceError::Forbidden(m)) if m.contains("another department")
    ));
    // And the other way round.
    let req = IssueRequest {
        licence_type: FOOD.into(),
        fields: obj(json!({"licence_class": "A"})),
        ..request(&f.sm2)
    };
    assert!(matches!(
        f.svc.issuance().issue(&f.approval, &req, NOW),
        Err(ServiceError::Forbidden(_))
    ));
}

#[test]
fn issuing_to_a_bad_holder_id_is_invalid() {
    let Some(f) = fixture() else { return };
    let req = IssueRequest {
        holder_id: "91110108551385082A".into(),
        ..request(&f.sm2)
    };
    let (field, _) = invalid_field(f.svc.issuance().issue(&f.market, &req, NOW));
    assert_eq!(field, "holder_id");
}

#[test]
fn issuing_an_unknown_field_is_invalid() {
    let Some(f) = fixture() else { return };
    let mut req = request(&f.sm2);
    req.fields.insert("colour".into(), json!("red"));
    let (field, reason) = invalid_field(f.svc.issuance().issue(&f.market, &req, NOW));
    assert_eq!(field, "fields.colour");
    assert!(reason.contains("not a field"), "{reason}");
}

#[test]
fn issuing_without_a_required_field_is_invalid() {
    let Some(f) = fixture() else { return };
    let mut req = request(&f.es256);
    req.fields.remove("legal_representative");
    let (field, reason) = invalid_field(f.svc.issuance().issue(&f.market, &req, NOW));
    assert_eq!(field, "fields.legal_representative");
    assert_eq!(reason, "required");
}

#[test]
fn issuing_a_field_of_the_wrong_type_is_invalid() {
    let Some(f) = fixture() else { return };
    let mut req = request(&f.es256);
    req.fields.insert("name".into(), json!(42));
    let (field, reason) = invalid_field(f.svc.issuance().issue(&f.market, &req, NOW));
    assert_eq!(field, "fields.name");
    assert!(reason.contains("string"), "{reason}");

    req.fields = business_fields();
    req.fields.insert("established".into(), json!("2010-02-30"));
    let (field, _) = invalid_field(f.svc.issuance().issue(&f.market, &req, NOW));
    assert_eq!(field, "fields.established");
}

// ---- consents ----

fn consent(f: &Fixture) -> (ConsentRecord, String) {
    f.svc
        .holders().create_consent(
            &f.market,
            HOLDER,
            &f.approval,
            &[BUSINESS.to_owned()],
            "食品经营许可审批",
            3600,
            NOW,
        )
        .unwrap()
}

fn forbidden(result: Result<ConsentRecord, ServiceError>) -> String {
    match result {
        Err(ServiceError::Forbidden(m)) => m,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[test]
fn consent_is_checked_against_department_holder_type_and_time() {
    let Some(f) = fixture() else { return };
    let (record, token) = consent(&f);
    assert_eq!(record.expires_at, NOW + 3600);
    let ok = f
        .svc
        .holders().check_consent(&token, HOLDER, &f.approval, BUSINESS, NOW + 10)
        .unwrap();
    assert_eq!(ok, record);

    let m = forbidden(
        f.svc
            .holders().check_consent(&token, HOLDER, &f.market, BUSINESS, NOW),
    );
    assert!(m.contains("consent token refused"), "{m}");
    let m = forbidden(
        f.svc
            .holders().check_consent(&token, OTHER_HOLDER, &f.approval, BUSINESS, NOW),
    );
    assert!(m.contains("another holder"), "{m}");
    let m = forbidden(f.svc.holders().check_consent(&token, HOLDER, &f.approval, FOOD, NOW));
    assert!(m.contains("does not cover"), "{m}");
    let m =
        forbidden(
            f.svc
                .holders().check_consent(&token, HOLDER, &f.approval, BUSINESS, record.expires_at),
        );
    assert!(m.contains("expired"), "{m}");
}

#[test]
fn revoked_consent_is_refused() {
    let Some(f) = fixture() else { return };
    let (record, token) = consent(&f);
    assert!(matches!(
        f.svc.holders().revoke_consent(&record.id, &f.approval, NOW),
        Err(ServiceError::Forbidden(_))
    ));
    f.svc
        .holders().revoke_consent(&record.id, &f.market, NOW + 5)
        .unwrap();
    let m = forbidden(
        f.svc
            .holders().check_consent(&token, HOLDER, &f.approval, BUSINESS, NOW + 10),
    );
    assert!(m.contains("revoked"), "{m}");
    assert!(matches!(
        f.svc.holders().revoke_consent(&record.id, &f.market, NOW + 20),
        Err(ServiceError::Conflict(_))
    ));
}

#[test]
fn consent_token_signed_by_another_key_is_refused() {
    let Some(f) = fixture() else { return };
    let (record, _) = consent(&f);
    let claims = json!({
        "iss": "urn:certgate:gateway",
        "jti": record.id,
        "sub": f.svc.holders().holder_pseudonym(HOLDER).unwrap(),
        "aud": format!("urn:certgate:dept:{APPROVAL}"),
        "licence_types": [BUSINESS],
        "purpose": "食品经营许可审批",
        "iat": NOW,
        "exp": record.expires_at,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(f.svc.signing_kid.clone());
    let other = SealKey::generate(JwsAlg::Es256).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_der(&other.to_pkcs8_der().unwrap());
    let forged = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let m = forbidden(
        f.svc
            .holders().check_consent(&forged, HOLDER, &f.approval, BUSINESS, NOW),
    );
    assert!(m.contains("consent token refused"), "{m}");
}

#[test]
fn consent_ttl_must_be_between_one_second_and_a_day() {
    let Some(f) = fixture() else { return };
    for ttl in [0, -1, MAX_CONSENT_SECONDS + 1] {
        match f.svc.holders().create_consent(
            &f.market,
            HOLDER,
            &f.approval,
            &[BUSINESS.to_owned()],
            "审批",
            ttl,
            NOW,
        ) {
            Err(ServiceError::Invalid { field, .. }) => assert_eq!(field, "ttl_seconds"),
            other => panic!("ttl {ttl}: expected Invalid, got {other:?}"),
        }
    }
    assert!(
        f.svc
            .holders().create_consent(
                &f.market,
                HOLDER,
                &f.approval,
                &[BUSINESS.to_owned()],
                "审批",
                MAX_CONSENT_SECONDS,
                NOW,
            )
            .is_ok()
    );
}

#[test]
fn a_consent_names_each_licence_type_once() {
    let Some(f) = fixture() else { return };
    // 40,000 copies of one type would make a consent of a megabyte, signed into its token.
    let copies = vec![BUSINESS.to_owned(); 40_000];
    for types in [&copies[..2], &copies[..], &[BUSINESS.to_owned(), FOOD.to_owned(), BUSINESS.to_owned()][..]] {
        match f.svc.holders().create_consent(&f.market, HOLDER, &f.approval, types, "审批", 60, NOW) {
            Err(ServiceError::Invalid { field, reason }) => {
                assert_eq!(field, "licence_types");
                assert!(reason.contains("named twice"), "{reason}");
            }
            other => panic!("{} types: expected Invalid, got {other:?}", types.len()),
        }
    }
    let both = [BUSINESS.to_owned(), FOOD.to_owned()];
    let (record, _) = f
        .svc
        .holders()
        .create_consent(&f.market, HOLDER, &f.approval, &both, "审批", 60, NOW)
        .unwrap();
    assert_eq!(record.licence_types, both);
}

// ---- show-codes ----

#[test]
fn show_code_redeems_once() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let (code, expires_at) = f.svc.holders().create_show_code(&f.market, licence.id.as_str(), NOW).unwrap();
    assert_eq!(expires_at, NOW + SHOW_CODE_SECONDS);
    let shown = f
        .svc
        .holders().redeem_show_code(&code, &f.approval, NOW + 10)
        .unwrap();
    assert_eq!(shown.id, licence.id);
    assert!(matches!(
        f.svc.holders().redeem_show_code(&code, &f.approval, NOW + 11),
        Err(ServiceError::Forbidden(_))
    ));
}

#[test]
fn show_codes_are_deleted_an_hour_after_they_expire_by_the_next_one_made() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let id = licence.id.as_str();
    let sha = |code: &str| hex::encode(Sha256::digest(code.as_bytes()));
    let (old, _) = f.svc.holders().create_show_code(&f.market, id, NOW).unwrap();
    let kept = NOW + SHOW_CODE_SECONDS + SHOW_CODE_KEPT_SECONDS;
    f.svc.holders().create_show_code(&f.market, id, kept).unwrap();
    assert!(f.svc.store.show_code(&sha(&old)).unwrap().is_some(), "kept an hour after expiry");
    let (new, _) = f.svc.holders().create_show_code(&f.market, id, kept + 1).unwrap();
    assert!(f.svc.store.show_code(&sha(&old)).unwrap().is_none());
    assert!(f.svc.store.show_code(&sha(&new)).unwrap().is_some());
}

#[test]
fn expired_or_unknown_show_code_is_refused() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.es256);
    let (code, _) = f.svc.holders().create_show_code(&f.market, licence.id.as_str(), NOW).unwrap();
    assert!(matches!(
        f.svc
            .holders().redeem_show_code(&code, &f.approval, NOW + SHOW_CODE_SECONDS + 1),
        Err(ServiceError::Forbidden(_))
    ));
    let unknown = jws::b64url([7u8; 32]);
    assert!(matches!(
        f.svc.holders().redeem_show_code(&unknown, &f.approval, NOW),
        Err(ServiceError::Forbidden(_))
    ));
    // A suspended licence gets no show-code.
    f.svc
        .issuance().change_status(licence.id.as_str(), &f.market, Lifecycle::Suspend, "inspection")
        .unwrap();
    assert!(matches!(
        f.svc.holders().create_show_code(&f.market, licence.id.as_str(), NOW),
        Err(ServiceError::Conflict(_))
    ));
}

// ---- documents sealed in the GB/T 38540 format ----

fn verdict_of(
    f: &Fixture,
    doc: &[u8],
    der: &[u8],
) -> crate::document_seal::SealVerdict {
    f.svc
        .seals().verify_sealed_document(&crate::document_seal::Document::Bytes(doc), der)
        .unwrap()
}

fn failed(v: &crate::document_seal::SealVerdict) -> Vec<&'static str> {
    v.checks.iter().filter(|c| !c.ok).map(|c| c.check).collect()
}

#[test]
fn documents_sealed_with_sm2_and_p256_verify_and_a_changed_byte_does_not() {
    use crate::document_seal::Document;
    let Some(f) = fixture() else { return };
    let pdf = b"%PDF-1.7\n a contract between two enterprises\n%%EOF\n".to_vec();
    for seal in [&f.sm2, &f.es256] {
        let sealed = f
            .svc
            .seals().seal_document(&seal.id, &f.market, &Document::Bytes(&pdf), "contract.pdf", NOW + 60)
            .unwrap();
        let v = verdict_of(&f, &pdf, &sealed.ses_signature);
        assert!(v.valid, "{:?}: {:?}", seal.alg, v.checks);
        assert_eq!(v.seal_id.as_deref(), Some(seal.id.as_str()));
        assert_eq!(v.sealed_at, Some(NOW + 60));
        assert!(v.authority.is_some());
        let mut changed = pdf.clone();
        changed[10] ^= 1;
        assert_eq!(failed(&verdict_of(&f, &changed, &sealed.ses_signature)), ["document_digest"]);
        // Sealing the digest instead of the document gives the same verdict.
        let alg = crate::ses::SesAlg::of(seal.alg);
        let digest = Document::Digest {
            alg: if seal.alg == JwsAlg::Sm2Sm3 { "sm3" } else { "sha256" },
            value: alg.digest(&pdf).unwrap(),
        };
        let by_digest = f
            .svc
            .seals().seal_document(&seal.id, &f.market, &digest, "contract.pdf", NOW + 60)
            .unwrap();
        assert!(verdict_of(&f, &pdf, &by_digest.ses_signature).valid);
    }
}

#[test]
fn edited_seals_foreign_signers_and_revocation_are_each_named() {
    use crate::document_seal::Document;
    use crate::ses::SesSignature;
    let Some(f) = fixture() else { return };
    let doc = b"a procurement bid".to_vec();
    let sealed = f
        .svc
        .seals().seal_document(&f.sm2.id, &f.market, &Document::Bytes(&doc), "bid.pdf", NOW + 60)
        .unwrap();
    let parsed = SesSignature::parse(&sealed.ses_signature).unwrap();
    let signer = f.svc.seal_key(&f.sm2).unwrap();

    // The seal's name edited and the whole signature made again by the seal's own key: the
    // maker's signature no longer holds.
    let mut renamed = parsed.clone();
    renamed.to_sign.seal.info.name = "某区市场监督管理局合同专用章".into();
    let resigned = SesSignature::sign(renamed.to_sign, renamed.signer_cert, &signer).unwrap();
    assert_eq!(
        failed(&verdict_of(&f, &doc, &resigned.to_der())),
        ["seal_maker_signature"]
    );
    // Signed by another SM2 seal's key and certificate: not a signer the seal allows.
    let other = f
        .svc
        .seals().create_seal(department(&f.market), "合同专用章", JwsAlg::Sm2Sm3, None, NOW)
        .unwrap();
    let other_key = f.svc.seal_key(&other).unwrap();
    let other_cert = openssl::x509::X509::from_pem(other.certificate_pem.as_bytes())
        .unwrap()
        .to_der()
        .unwrap();
    let foreign = SesSignature::sign(parsed.to_sign.clone(), other_cert, &other_key).unwrap();
    // (The register then does not speak for it either: its status is not this seal's.)
    assert_eq!(
        failed(&verdict_of(&f, &doc, &foreign.to_der())),
        ["signer_in_seal", "seal_status"]
    );
    // Sealed at a time outside the seal's validity.
    let mut late = parsed.to_sign.clone();
    late.time = time::OffsetDateTime::from_unix_timestamp(f.sm2.not_after + 86_400).unwrap();
    let late = SesSignature::sign(late, parsed.signer_cert.clone(), &signer).unwrap();
    assert!(failed(&verdict_of(&f, &doc, &late.to_der())).contains(&"seal_validity"));
    // Sealed before the seal was valid.
    let mut early = parsed.to_sign.clone();
    early.time = time::OffsetDateTime::from_unix_timestamp(f.sm2.created_at - 86_400).unwrap();
    let early = SesSignature::sign(early, parsed.signer_cert.clone(), &signer).unwrap();
    assert!(failed(&verdict_of(&f, &doc, &early.to_der())).contains(&"seal_validity"));
    // Revoked after the sealing: still valid; a signature made after the revocation is not.
    f.svc
        .seals().revoke_seal(&f.sm2.id, &f.market, "印章遗失", NOW + 120)
        .unwrap();
    assert!(verdict_of(&f, &doc, &sealed.ses_signature).valid);
    let mut after = parsed.to_sign.clone();
    after.time = time::OffsetDateTime::from_unix_timestamp(NOW + 180).unwrap();
    let after = SesSignature::sign(after, parsed.signer_cert.clone(), &signer).unwrap();
    assert_eq!(failed(&verdict_of(&f, &doc, &after.to_der())), ["seal_status"]);
    // A revoked seal signs nothing more; another department cannot seal with it either.
    assert!(matches!(
        f.svc
            .seals().seal_document(&f.sm2.id, &f.market, &Document::Bytes(&doc), "x.pdf", NOW + 200),
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        f.svc
            .seals().seal_document(&f.es256.id, &f.approval, &Document::Bytes(&doc), "x.pdf", NOW + 200),
        Err(ServiceError::Forbidden(_))
    ));
    // Truncated DER: a verdict naming the format, not an error.
    let v = verdict_of(&f, &doc, &sealed.ses_signature[..100]);
    assert!(!v.valid);
    assert_eq!(failed(&v), ["format"]);
}

#[test]
fn the_detached_jws_form_verifies_and_names_what_fails() {
    use crate::document_seal::Document;
    let Some(f) = fixture() else { return };
    let doc = b"a property registration".to_vec();
    for seal in [&f.sm2, &f.es256] {
        let sealed = f
            .svc
            .seals().seal_document(&seal.id, &f.market, &Document::Bytes(&doc), "deed.pdf", NOW + 60)
            .unwrap();
        let parts: Vec<&str> = sealed.jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[1].is_empty(), "detached: no payload in the token");
        let verdict = |d: &[u8], jws: &str| {
            f.svc
                .seals().verify_sealed_jws(&Document::Bytes(d), jws)
                .unwrap()
        };
        let v = verdict(&doc, &sealed.jws);
        assert!(v.valid, "{:?}: {:?}", seal.alg, v.checks);
        assert_eq!(v.seal_id.as_deref(), Some(seal.id.as_str()));
        assert_eq!(v.sealed_at, Some(NOW + 60));
        let mut changed = doc.clone();
        changed[0] ^= 1;
        assert_eq!(failed(&verdict(&changed, &sealed.jws)), ["signature"]);
        assert_eq!(failed(&verdict(&doc, "not.a.jws")), ["format"]);
        assert_eq!(failed(&verdict(&doc, &sealed.jws[..20])), ["format"]);
    }
    // Revoked after the sealing: still valid.
    let sealed = f
        .svc
        .seals().seal_document(&f.sm2.id, &f.market, &Document::Bytes(&doc), "deed.pdf", NOW + 60)
        .unwrap();
    f.svc
        .seals().revoke_seal(&f.sm2.id, &f.market, "印章遗失", NOW + 120)
        .unwrap();
    assert!(
        f.svc
            .seals().verify_sealed_jws(&Document::Bytes(&doc), &sealed.jws)
            .unwrap()
            .valid
    );
}

#[test]
fn seals_of_a_trusted_foreign_system_verify_and_stop_when_it_is_removed() {
    use crate::ses::{Seal, SealInfo, SesAlg, SesSignature, ToSign};
    let Some(f) = fixture() else { return };
    let at = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).unwrap();
    // Another province's seal system: its CA, an enterprise's seal made there.
    let foreign = crate::seal_ca::SealCa::create("广东省电子印章系统", at(NOW - 86_400), 3650).unwrap();
    let signer = SealKey::generate(JwsAlg::Sm2Sm3).unwrap();
    let cert = foreign
        .issue_seal_certificate(
            signer.public_key(),
            &uscc(OTHER_HOLDER),
            "深圳某科技有限公司合同专用章",
            at(NOW - 3600),
            at(NOW + 365 * 86_400),
        )
        .unwrap()
        .to_der()
        .unwrap();
    let info = SealInfo {
        vid: "gd-seal".into(),
        es_id: "44030000000001".into(),
        seal_type: 1,
        name: "深圳某科技有限公司合同专用章".into(),
        certs: vec![cert.clone()],
        created: at(NOW - 3600),
        valid_start: at(NOW - 3600),
        valid_end: at(NOW + 365 * 86_400),
        picture_type: "png".into(),
        picture: vec![1, 2, 3],
        width: 40,
        height: 40,
    };
    let seal = Seal::make(info, foreign.certificate().to_der().unwrap(), foreign.key()).unwrap();
    let doc = b"a cross-region procurement contract".to_vec();
    let sealed_at = |t: i64| {
        SesSignature::sign(
            ToSign {
                seal: seal.clone(),
                time: at(t),
                data_hash: SesAlg::Sm2Sm3.digest(&doc).unwrap(),
                property: "contract.pdf".into(),
            },
            cert.clone(),
            &signer,
        )
        .unwrap()
        .to_der()
    };
    let early = sealed_at(NOW + 60);
    // Not on the trust list: refused, the chain named.
    assert!(failed(&verdict_of(&f, &doc, &early)).contains(&"certificate_chain"));
    // Trusted: valid, the foreign authority named.
    let pem = foreign.certificate_pem();
    let ca = f.svc.seals().add_seal_ca(&pem, "广东省电子印章系统", "440000", NOW).unwrap();
    let v = verdict_of(&f, &doc, &early);
    assert!(v.valid, "{:?}", v.checks);
    assert_eq!(v.authority.as_deref(), Some("广东省电子印章系统 (440000)"));
    // A trusted foreign CA does not speak for this register's seals or owners: a seal of it
    // that gives a local seal's id, or names an owner whose seals are made here, is refused.
    let forged = |es_id: &str, owner: &str| {
        let cert = foreign
            .issue_seal_certificate(signer.public_key(), &uscc(owner), "某区市场监督管理局公章", at(NOW - 3600), at(NOW + 86_400))
            .unwrap()
            .to_der()
            .unwrap();
        let info = SealInfo {
            vid: "gd-seal".into(),
            es_id: es_id.into(),
            seal_type: 1,
            name: "某区市场监督管理局公章".into(),
            certs: vec![cert.clone()],
            created: at(NOW - 3600),
            valid_start: at(NOW - 3600),
            valid_end: at(NOW + 86_400),
            picture_type: "png".into(),
            picture: vec![1, 2, 3],
            width: 40,
            height: 40,
        };
        let seal = Seal::make(info, foreign.certificate().to_der().unwrap(), foreign.key()).unwrap();
        SesSignature::sign(
            ToSign {
                seal,
                time: at(NOW + 60),
                data_hash: SesAlg::Sm2Sm3.digest(&doc).unwrap(),
                property: "contract.pdf".into(),
            },
            cert,
            &signer,
        )
        .unwrap()
        .to_der()
    };
    let v = verdict_of(&f, &doc, &forged(&f.sm2.id, OTHER_HOLDER));
    assert_eq!(failed(&v), ["seal_status"], "{:?}", v.checks);
    let v = verdict_of(&f, &doc, &forged("44030000000002", MARKET));
    assert_eq!(failed(&v), ["seal_status"], "{:?}", v.checks);
    assert!(verdict_of(&f, &doc, &forged("44030000000002", OTHER_HOLDER)).valid);
    const REGISTERED_HERE: &str = "91110105MA0000005E";
    assert!(verdict_of(&f, &doc, &forged("44030000000003", REGISTERED_HERE)).valid);
    // An owner registered here (a business licence of this register), though it has no seal
    // here yet, is this register's too.
    f.svc
        .issuance()
        .issue(&f.market, &IssueRequest { holder_id: REGISTERED_HERE.into(), ..request(&f.sm2) }, NOW)
        .unwrap();
    let v = verdict_of(&f, &doc, &forged("44030000000003", REGISTERED_HERE));
    assert_eq!(failed(&v), ["seal_status"], "{:?}", v.checks);
    // Removed from NOW + 100: what was sealed before still verifies, what after does not.
    f.svc.seals().remove_seal_ca(&ca.id, NOW + 100).unwrap();
    assert!(verdict_of(&f, &doc, &early).valid);
    let late = sealed_at(NOW + 200);
    assert!(failed(&verdict_of(&f, &doc, &late)).contains(&"certificate_chain"));
    assert_eq!(f.svc.seals().seal_cas().unwrap()[0].removed_at, Some(NOW + 100));
    // Bad requests, each named.
    assert!(matches!(
        f.svc.seals().add_seal_ca("not pem", "x", "440000", NOW),
        Err(ServiceError::Invalid { field, .. }) if field == "certificate_pem"
    ));
    let seal_cert_pem = String::from_utf8(
        openssl::x509::X509::from_der(&cert).unwrap().to_pem().unwrap(),
    )
    .unwrap();
    assert!(matches!(
        f.svc.seals().add_seal_ca(&seal_cert_pem, "x", "440000", NOW),
        Err(ServiceError::Invalid { field, .. }) if field == "certificate_pem"
    ));
    assert!(matches!(
        f.svc.seals().add_seal_ca(&pem, "", "440000", NOW),
        Err(ServiceError::Invalid { field, .. }) if field == "name"
    ));
    assert!(matches!(
        f.svc.seals().add_seal_ca(&pem, "广东省电子印章系统", "440000", NOW),
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        f.svc.seals().remove_seal_ca(&ca.id, NOW + 300),
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        f.svc.seals().remove_seal_ca("sealca-nope", NOW + 300),
        Err(ServiceError::NotFound(_))
    ));
}

#[test]
fn seal_names_are_the_owners_registered_name_and_the_kind() {
    let Some(f) = fixture() else { return };
    assert_eq!(f.sm2.name, "某区市场监督管理局公章");
    assert_eq!(f.sm2.owner_name.as_deref(), Some("某区市场监督管理局"));
    // A name after another department is refused, naming the one it must be.
    match f.svc.seals().create_seal_valid_for(
        department(&f.market),
        "公章",
        Some("某区行政审批局公章"),
        JwsAlg::Sm2Sm3,
        None,
        30,
        NOW,
    ) {
        Err(ServiceError::Invalid { field, reason }) => {
            assert_eq!(field, "name");
            assert!(reason.contains("某区市场监督管理局公章"), "{reason}");
        }
        other => panic!("a seal named after another department was made: {other:?}"),
    }
    for kind in ["私章", "", "=公章", "公\n章", "很长很长很长很长的专用章啊"] {
        assert!(
            matches!(
                f.svc.seals().create_seal(department(&f.market), kind, JwsAlg::Es256, None, NOW),
                Err(ServiceError::Invalid { ref field, .. }) if field == "seal_type"
            ),
            "{kind:?}"
        );
    }
    // An enterprise's seal: only once it holds a valid business licence, under its name.
    let xiaomi = uscc(HOLDER);
    assert!(matches!(
        f.svc.seals().create_seal(SealOwner::Enterprise { id: &xiaomi, made_by: &f.market }, "公章", JwsAlg::Sm2Sm3, None, NOW),
        Err(ServiceError::Conflict(m)) if m.contains("营业执照")
    ));
    issue(&f, &f.sm2);
    let own = f
        .svc
        .seals().create_seal(SealOwner::Enterprise { id: &xiaomi, made_by: &f.market }, "合同专用章", JwsAlg::Sm2Sm3, None, NOW)
        .unwrap();
    assert_eq!(own.name, "小米科技有限责任公司合同专用章");
    assert_eq!(own.owner, xiaomi);
    assert!(matches!(
        f.svc.seals().create_seal_valid_for(
            SealOwner::Enterprise { id: &xiaomi, made_by: &f.market },
            "公章",
            Some("华为技术有限公司公章"),
            JwsAlg::Sm2Sm3,
            None,
            30,
            NOW
        ),
        Err(ServiceError::Invalid { .. })
    ));
    // Only the registrar makes them.
    assert!(matches!(
        f.svc.seals().create_seal(SealOwner::Enterprise { id: &xiaomi, made_by: &f.approval }, "公章", JwsAlg::Sm2Sm3, None, NOW),
        Err(ServiceError::Forbidden(_))
    ));
    // The registrar may revoke the enterprise's seal; another department may not.
    assert!(matches!(
        f.svc.seals().revoke_seal(&own.id, &f.approval, "遗失", NOW),
        Err(ServiceError::Forbidden(_))
    ));
    f.svc.seals().revoke_seal(&own.id, &f.market, "遗失", NOW).unwrap();
    // A department is not a market entity: no enterprise seal for it.
    assert!(matches!(
        f.svc.seals().create_seal(SealOwner::Enterprise { id: &f.market, made_by: &f.market }, "公章", JwsAlg::Sm2Sm3, None, NOW),
        Err(ServiceError::Invalid { ref field, .. }) if field == "holder"
    ));
}

#[test]
fn only_the_enterprises_own_registrar_makes_and_revokes_its_seals() {
    // Two departments issue business licences; the market bureau registered the enterprise.
    let mut two_registrars = types();
    two_registrars[0].issuers.insert(uscc(APPROVAL));
    let Some(f) = fixture_with(two_registrars) else { return };
    let registered = issue(&f, &f.sm2);
    let xiaomi = uscc(HOLDER);
    let make = |by: &Uscc| {
        f.svc.seals().create_seal(
            SealOwner::Enterprise { id: &xiaomi, made_by: by },
            "合同专用章",
            JwsAlg::Es256,
            None,
            NOW,
        )
    };
    assert!(matches!(make(&f.approval), Err(ServiceError::Forbidden(m)) if m.contains("own registrar")));
    let seal = make(&f.market).unwrap();
    assert_eq!(
        f.svc.seals().registrar_of_record(&xiaomi, NOW).unwrap(),
        Some(f.market.clone())
    );
    // A later business licence from the other registrar does not take the enterprise over.
    let approval_seal = f
        .svc
        .seals()
        .create_seal(department(&f.approval), "公章", JwsAlg::Es256, None, NOW)
        .unwrap();
    let later = f
        .svc
        .issuance()
        .issue(&f.approval, &request(&approval_seal), NOW + 1)
        .unwrap();
    assert_eq!(
        f.svc.seals().registrar_of_record(&xiaomi, NOW + 2).unwrap(),
        Some(f.market.clone())
    );
    assert!(matches!(make(&f.approval), Err(ServiceError::Forbidden(_))));
    assert!(matches!(
        f.svc.seals().revoke_seal(&seal.id, &f.approval, "遗失", NOW + 2),
        Err(ServiceError::Forbidden(_))
    ));
    assert!(f.svc.seals().seal(&seal.id).unwrap().revoked_at.is_none());
    f.svc
        .issuance()
        .change_status(later.id.as_str(), &f.approval, Lifecycle::Revoke, "撤销")
        .unwrap();
    // Struck off the register, the enterprise's seals (which sign nothing now) may be revoked
    // by a department that registered it, not by another.
    f.svc
        .issuance()
        .change_status(registered.id.as_str(), &f.market, Lifecycle::Revoke, "注销")
        .unwrap();
    assert_eq!(f.svc.seals().registrar_of_record(&xiaomi, NOW + 2).unwrap(), None);
    assert!(matches!(
        f.svc.seals().revoke_seal(&seal.id, &uscc("11110105MB0000007Y"), "注销", NOW + 2),
        Err(ServiceError::Forbidden(_))
    ));
    f.svc.seals().revoke_seal(&seal.id, &f.market, "注销", NOW + 2).unwrap();
}

#[test]
fn an_enterprise_seals_only_while_its_business_licence_is_valid() {
    let Some(f) = fixture() else { return };
    let registered = issue(&f, &f.sm2);
    let xiaomi = uscc(HOLDER);
    let seal = f
        .svc
        .seals()
        .create_seal(SealOwner::Enterprise { id: &xiaomi, made_by: &f.market }, "合同专用章", JwsAlg::Es256, None, NOW)
        .unwrap();
    let sign = || {
        f.svc.seals().seal_document(&seal.id, &xiaomi, &crate::document_seal::Document::Bytes(b"%PDF-1.7 bid"), "bid.pdf", NOW + 60)
    };
    sign().unwrap();
    let id = registered.id.as_str();
    f.svc.issuance().change_status(id, &f.market, Lifecycle::Suspend, "经营异常").unwrap();
    assert!(matches!(sign(), Err(ServiceError::Conflict(m)) if m.contains("营业执照")));
    f.svc.issuance().change_status(id, &f.market, Lifecycle::Resume, "恢复").unwrap();
    sign().unwrap();
    f.svc.issuance().change_status(id, &f.market, Lifecycle::Revoke, "注销").unwrap();
    assert!(matches!(sign(), Err(ServiceError::Conflict(_))));
}

#[test]
fn es256_licences_are_signed_low_s_and_their_high_s_twin_is_refused() {
    let Some(f) = fixture() else { return };
    for _ in 0..8 {
        let licence = issue(&f, &f.es256);
        let jwt = licence.sd_jwt.split('~').next().unwrap().to_owned();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = crate::jws::b64url_decode(sig).unwrap();
        assert!(crate::crypto::is_low_s(&sig[32..]), "issued high-S");
        // The twin (r, n - s) is a valid ECDSA signature, and is refused.
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let mut order = openssl::bn::BigNum::new().unwrap();
        group
            .order(&mut order, &mut openssl::bn::BigNumContext::new().unwrap())
            .unwrap();
        let s_val = openssl::bn::BigNum::from_slice(&sig[32..]).unwrap();
        let mut high = openssl::bn::BigNum::new().unwrap();
        high.checked_sub(&order, &s_val).unwrap();
        let mut twin = sig[..32].to_vec();
        twin.extend(high.to_vec_padded(32).unwrap());
        let forged = licence
            .sd_jwt
            .replacen(&jwt, &format!("{input}.{}", crate::jws::b64url(&twin)), 1);
        let r = openssl::bn::BigNum::from_slice(&twin[..32]).unwrap();
        let s2 = openssl::bn::BigNum::from_slice(&twin[32..]).unwrap();
        let der = openssl::ecdsa::EcdsaSig::from_private_components(r, s2).unwrap();
        let cert = openssl::x509::X509::from_pem(f.es256.certificate_pem.as_bytes()).unwrap();
        let ec = cert.public_key().unwrap().ec_key().unwrap();
        assert!(
            der.verify(&openssl::sha::sha256(input.as_bytes()), &ec).unwrap(),
            "the twin is a valid ECDSA signature"
        );
        assert_fails(&f.svc.verification().verify(&forged, NOW), "signature", "");
    }
}

#[test]
fn a_licence_whose_validity_has_ended_is_not_issued() {
    let Some(f) = fixture() else { return };
    let mut req = request(&f.sm2);
    req.valid_from = Some(NOW - 100);
    req.valid_until = Some(NOW - 1);
    assert!(matches!(
        f.svc.issuance().issue(&f.market, &req, NOW),
        Err(ServiceError::Invalid { field, .. }) if field == "valid_until"
    ));
    // The verdict names the clock-skew allowance.
    let licence = issue(&f, &f.sm2);
    let report = f.svc.verification().verify(&licence.sd_jwt, NOW);
    let time = report.checks.iter().find(|c| c.check == "time").unwrap();
    assert!(time.detail.contains("30 s of clock skew"), "{}", time.detail);
    let late = f.svc.verification().verify(&licence.sd_jwt, licence.expires_at + CLOCK_SKEW_SECONDS + 1);
    assert_fails(&late, "time", "clock skew");
}

#[test]
fn a_second_licence_of_a_type_held_once_is_refused_and_renewal_replaces() {
    let Some(f) = fixture() else { return };
    let seal = f
        .svc
        .seals().create_seal(department(&f.approval), "公章", JwsAlg::Es256, None, NOW)
        .unwrap();
    let req = IssueRequest {
        licence_type: FOOD.into(),
        holder_id: HOLDER.into(),
        holder_name: "小米科技有限责任公司".into(),
        seal_id: seal.id.clone(),
        fields: obj(json!({"licence_class": "A"})),
        valid_from: None,
        valid_until: None,
        serial: None,
    };
    let first = f.svc.issuance().issue(&f.approval, &req, NOW).unwrap();
    match f.svc.issuance().issue(&f.approval, &req, NOW) {
        Err(ServiceError::AlreadyHeld(id)) => assert_eq!(id, first.id.as_str()),
        other => panic!("a second food permit was issued: {other:?}"),
    }
    let renewed = f.svc.issuance().renew(first.id.as_str(), &f.approval, None, None, NOW).unwrap();
    assert_eq!(renewed.replaces.as_ref(), Some(&first.id));
    // Other holders are not affected.
    let mut other = req.clone();
    other.holder_id = OTHER_HOLDER.into();
    f.svc.issuance().issue(&f.approval, &other, NOW).unwrap();
}

#[test]
fn holder_names_with_control_bidi_or_formula_characters_are_refused() {
    let Some(f) = fixture() else { return };
    for bad in ["小米\0公司", "小米\r\n公司", "=cmd|' /C calc'!A0", "小米\u{202E}司公", "@SUM(1)"] {
        let mut req = request(&f.sm2);
        req.holder_name = bad.into();
        assert!(
            matches!(f.svc.issuance().issue(&f.market, &req, NOW), Err(ServiceError::Invalid { ref field, .. }) if field == "holder_name"),
            "{bad:?}"
        );
    }
}

#[test]
fn a_holders_licences_come_in_pages_valid_first() {
    let Some(f) = fixture() else { return };
    let ids: Vec<String> = (0..5).map(|_| issue(&f, &f.sm2).id.to_string()).collect();
    f.svc
        .issuance().change_status(&ids[4], &f.market, Lifecycle::Revoke, "吊销")
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = f.svc.licences_by_holder(HOLDER, BUSINESS, None, after.as_ref(), 2).unwrap();
        assert!(page.licences.len() <= 2);
        seen.extend(page.licences.iter().map(|l| (l.id.to_string(), l.status)));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[4], (ids[4].clone(), LicenceStatus::Revoked));
    assert!(seen[..4].iter().all(|(_, s)| *s == LicenceStatus::Valid));
}

#[test]
fn a_shown_licence_can_be_looked_at_without_using_the_code_up() {
    let Some(f) = fixture() else { return };
    let licence = issue(&f, &f.sm2);
    let (code, _) = f.svc.holders().create_show_code(&f.market, licence.id.as_str(), NOW).unwrap();
    assert_eq!(f.svc.holders().shown_licence(&code, NOW + 1).unwrap().id, licence.id);
    assert_eq!(f.svc.holders().shown_licence(&code, NOW + 2).unwrap().id, licence.id);
    f.svc.holders().redeem_show_code(&code, &f.approval, NOW + 3).unwrap();
    assert!(matches!(
        f.svc.holders().shown_licence(&code, NOW + 4),
        Err(ServiceError::Forbidden(_))
    ));
}

#[test]
fn consent_tokens_of_another_typ_are_refused_without_decoder_details() {
    let Some(f) = fixture() else { return };
    let (record, token) = consent(&f);
    let claims = f.svc.verify_gateway_jwt(&token, CONSENT_TYP).unwrap();
    assert_eq!(claims["jti"], json!(record.id));
    // The same claims signed by the gateway's key, but typed as a plain JWT (a proof token or
    // any other gateway token must not pass for a consent).
    let other = f.svc.sign_gateway_jwt("JWT", &Value::Object(claims)).unwrap();
    let m = forbidden(f.svc.holders().check_consent(&other, HOLDER, &f.approval, BUSINESS, NOW));
    assert!(m.contains("typ"), "{m}");
    for garbage in [
        "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        "not a token",
        &format!("{}!", &token[..token.len() - 1]),
    ] {
        let m = forbidden(f.svc.holders().check_consent(garbage, HOLDER, &f.approval, BUSINESS, NOW));
        let lower = m.to_lowercase();
        assert!(
            !lower.contains("base64") && !lower.contains("offset") && !lower.contains("error"),
            "{m}"
        );
    }
}

#[test]
fn a_drawn_serial_sorts_by_its_time_and_its_random_part_is_uniform() {
    assert!(drawn_serial_at(0).unwrap().starts_with("000000000"));
    assert!(drawn_serial_at(35).unwrap().starts_with("00000000Z"));
    assert!(drawn_serial_at(36).unwrap().starts_with("000000010"));
    // 2026-12-04 in milliseconds, and the last millisecond nine characters hold.
    let t: u128 = 1_796_342_400_000;
    assert_eq!(u128::from_str_radix(&drawn_serial_at(t).unwrap()[..9], 36).unwrap(), t);
    assert!(drawn_serial_at(36u128.pow(9) - 1).unwrap().starts_with("ZZZZZZZZZ"));
    // Later serials sort after earlier ones, whatever their random parts.
    let mut serials: Vec<String> = (0..200u128)
        .map(|i| drawn_serial_at(t + i * 7).unwrap())
        .collect();
    let drawn = serials.clone();
    serials.sort();
    assert_eq!(serials, drawn);
    // Every base-36 character turns up in the random parts: no residue is favoured away.
    let mut seen = std::collections::HashSet::new();
    for s in &drawn {
        assert_eq!(s.len(), 25);
        seen.extend(s[9..].bytes());
    }
    assert_eq!(seen.len(), 36);
}
