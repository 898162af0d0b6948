//! No-proof checks (无证明): a proof type's rule evaluated over dataset records and licence
//! status, answered as a short-lived signed proof that says yes or no and nothing else.

use serde::Serialize;
use serde_json::{Map, Value, json};

use std::future::Future;
use std::sync::Arc;

use cert_store::Uscc;

use crate::Exchange;
use crate::catalog::{Condition, FieldTest, ProofType};
use crate::upstream::FetchError;

/// Why a proof could not be answered; `E` is the licence register's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError<E> {
    /// No proof type has this id.
    #[error("no proof type `{0}`")]
    UnknownType(String),
    /// The holder is not of the proof type's kind.
    #[error("holder: {0}")]
    BadHolder(String),
    /// The department may not ask for this proof type.
    #[error("this department may not ask for {0}")]
    NotForDepartment(String),
    /// The proof type is not given for the matter stated.
    #[error("{0} is not given for the matter stated in X-Purpose")]
    NotForMatter(String),
    /// A dataset the rule reads could not be read (never answered "no" for that).
    #[error("dataset {dataset}: {error}")]
    Dataset {
        /// The dataset.
        dataset: String,
        /// Why.
        error: FetchError,
    },
    /// The licence register could not be read.
    #[error("licence register: {0}")]
    Register(E),
}

/// A proof's answer: the type asked, the holder (as written in the type's kind), the result
/// and when it was decided.
#[derive(Debug, Clone)]
pub struct ProofAnswer {
    /// The proof type.
    pub proof: Arc<ProofType>,
    /// The holder.
    pub holder: String,
    /// Yes or no.
    pub result: bool,
    /// When (Unix seconds).
    pub decided_at: i64,
}

impl Exchange {
    /// The proof type `type_id` and `holder` written in its kind: the first step of a proof
    /// request, before anything is decided (so that a refusal can name the holder).
    pub fn proof_request<E>(
        &self,
        type_id: &str,
        holder: &str,
    ) -> Result<(Arc<ProofType>, String), ProofError<E>> {
        let proof = self
            .proof_type(type_id)
            .cloned()
            .ok_or_else(|| ProofError::UnknownType(type_id.chars().take(40).collect()))?;
        let holder = proof
            .holder_kind
            .parse(holder.trim())
            .map_err(ProofError::BadHolder)?;
        Ok((proof, holder))
    }

    /// Answers `proof` for `holder`, asked by `department` for `matter`: the department and
    /// the matter must be the type's; every dataset the rule reads is read fresh or from its
    /// source (never stale: a failing source is an error, not a "no"); licence conditions ask
    /// `holds_valid(holder, licence type, now)`.
    pub async fn answer_proof<E, F, Fut>(
        &self,
        proof: Arc<ProofType>,
        holder: String,
        department: &Uscc,
        matter: Option<&str>,
        holds_valid: F,
    ) -> Result<ProofAnswer, ProofError<E>>
    where
        F: Fn(String, String, i64) -> Fut,
        Fut: Future<Output = Result<bool, E>>,
    {
        if !proof.departments.contains(department) {
            return Err(ProofError::NotForDepartment(proof.name.clone()));
        }
        if let Some(purposes) = &proof.purposes
            && !matter.is_some_and(|m| purposes.contains(m))
        {
            return Err(ProofError::NotForMatter(proof.name.clone()));
        }
        let mut records = std::collections::HashMap::new();
        for id in datasets_read(&proof) {
            let Some(ds) = self.dataset(id).cloned() else {
                return Err(ProofError::Dataset {
                    dataset: id.to_owned(),
                    error: FetchError::Unreachable("not in the catalog".into()),
                });
            };
            let record = match self.get(&ds, &holder, false).await {
                Ok((r, _)) => Some(r),
                Err(FetchError::NotFound) => None,
                Err(error) => {
                    return Err(ProofError::Dataset {
                        dataset: ds.id.clone(),
                        error,
                    });
                }
            };
            records.insert(id.to_owned(), record);
        }
        let now = self.clock.now();
        let mut result = true;
        for c in &proof.conditions {
            let met = match c {
                Condition::Field {
                    dataset,
                    field,
                    test,
                } => {
                    let value = records
                        .get(dataset)
                        .and_then(|r| r.as_ref())
                        .and_then(|r| r.fields.get(field));
                    holds(test, value)
                }
                Condition::ValidLicence { licence_type } => {
                    holds_valid(holder.clone(), licence_type.clone(), now)
                        .await
                        .map_err(ProofError::Register)?
                }
            };
            result &= met;
        }
        Ok(ProofAnswer {
            proof,
            holder,
            result,
            decided_at: now,
        })
    }
}

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
#[derive(Debug, Serialize)]
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
        (Some(iat), Some(exp)) if exp - iat > crate::catalog::MAX_PROOF_SECONDS as i64 => {
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
