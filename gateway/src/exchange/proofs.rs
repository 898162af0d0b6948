//! No-proof checks (无证明): a proof type's rule evaluated over dataset records and licence
//! status, answered as a short-lived signed proof that says yes or no and nothing else.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::catalog::{Condition, FieldTest, ProofType};

/// The `typ` header of a proof token.
pub const PROOF_TYP: &str = "certgate-proof+jwt";

/// True when `test` holds for the field value `v` (`None`: the record lacks the field, or
/// there is no record).
pub fn holds(test: &FieldTest, v: Option<&Value>) -> bool {
    let v = v.filter(|v| !v.is_null());
    match test {
        FieldTest::Exists(want) => v.is_some() == *want,
        FieldTest::Equals(x) => v.is_some_and(|v| same(v, x)),
        FieldTest::In(xs) => v.is_some_and(|v| xs.iter().any(|x| same(v, x))),
        FieldTest::Range { min, max } => v
            .and_then(Value::as_f64)
            .is_some_and(|n| min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)),
    }
}

/// JSON equality in which `0` and `0.0` are the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The conditions of `proof` that read datasets, grouped by dataset, in rule order.
pub fn datasets_read(proof: &ProofType) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in &proof.conditions {
        if let Condition::Field { dataset, .. } = c
            && !out.contains(&dataset.as_str())
        {
            out.push(dataset);
        }
    }
    out
}

/// The claims of a proof token. They name the proof type, the holder and the answer — never
/// a value read from a dataset or a licence.
#[allow(clippy::too_many_arguments)]
pub fn claims(
    proof: &ProofType,
    id: &str,
    holder: &str,
    requested_by: &str,
    result: bool,
    now: i64,
) -> Value {
    json!({
        "iss": "urn:certgate:gateway",
        "jti": id,
        "sub": holder,
        "aud": format!("urn:certgate:dept:{requested_by}"),
        "proof_type": proof.id,
        "proof_name": proof.name,
        "result": result,
        "iat": now,
        "exp": now + proof.validity.as_secs() as i64,
    })
}

/// One check of a proof verification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProofCheck {
    /// `signature`, `proof_type` or `time`.
    pub check: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Why not, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Checks the claims of a token whose signature is already verified: a known proof type and
/// the time window (with 60 s of clock skew).
pub fn check_claims(
    claims: &Map<String, Value>,
    known_type: impl Fn(&str) -> bool,
    now: i64,
) -> Vec<ProofCheck> {
    let mut checks = Vec::new();
    let typ = claims.get("proof_type").and_then(Value::as_str);
    let typed = typ.is_some_and(&known_type) && claims.get("result").is_some_and(Value::is_boolean);
    checks.push(ProofCheck {
        check: "proof_type",
        ok: typed,
        detail: (!typed).then(|| "not a proof type of this gateway, or no boolean result".into()),
    });
    let iat = claims.get("iat").and_then(Value::as_i64);
    let exp = claims.get("exp").and_then(Value::as_i64);
    let detail = match (iat, exp) {
        (Some(iat), _) if iat > now + 60 => Some("issued in the future".to_owned()),
        (_, Some(exp)) if exp <= now => Some("expired".to_owned()),
        (Some(iat), Some(exp)) if exp - iat > super::catalog::MAX_PROOF_SECONDS as i64 => {
            Some("valid for longer than 24 hours".to_owned())
        }
        (Some(_), Some(_)) => None,
        _ => Some("iat or exp missing".to_owned()),
    };
    checks.push(ProofCheck {
        check: "time",
        ok: detail.is_none(),
        detail,
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_tests() {
        let eq = FieldTest::Equals(json!(0));
        assert!(holds(&eq, Some(&json!(0.0))));
        assert!(!holds(&eq, Some(&json!("0"))));
        assert!(!holds(&eq, None));
        let within = FieldTest::In(vec![json!("A"), json!("AA")]);
        assert!(holds(&within, Some(&json!("AA"))));
        assert!(!holds(&within, Some(&json!("B"))));
        let range = FieldTest::Range {
            min: Some(18.0),
            max: None,
        };
        assert!(holds(&range, Some(&json!(18))));
        assert!(!holds(&range, Some(&json!(17.9))));
        assert!(!holds(&range, Some(&json!("20"))));
        assert!(holds(&FieldTest::Exists(true), Some(&json!(""))));
        assert!(!holds(&FieldTest::Exists(true), Some(&Value::Null)));
        assert!(holds(&FieldTest::Exists(false), None));
        assert!(holds(&FieldTest::Exists(false), Some(&Value::Null)));
    }

    #[test]
    fn time_claims_are_bounded() {
        let now = 1_000_000;
        let c = |iat: i64, exp: i64| {
            let m = json!({"proof_type": "p", "result": true, "iat": iat, "exp": exp});
            let Value::Object(m) = m else { unreachable!() };
            check_claims(&m, |t| t == "p", now)
        };
        assert!(c(now, now + 10).iter().all(|x| x.ok));
        assert!(!c(now - 100, now - 1)[1].ok);
        assert!(!c(now + 120, now + 200)[1].ok);
        assert!(!c(now, now + 90_000)[1].ok);
    }
}
