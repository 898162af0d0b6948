//! Eligibility, decided in Rust from the conditions and explained condition by condition:
//! met, not met, or data missing — with the enterprise's value and the threshold.

use serde::Serialize;
use serde_json::{Value, json};
use time::Date;

use crate::codes::{Credit, Industry, Region, Scale};
use crate::model::{
    Benefit, Category, Condition, FormulaField, Policy, Profile, format_date, whole_years,
};
use crate::tags::Tag;

/// The outcome of one condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The enterprise meets it.
    Met,
    /// The enterprise does not meet it.
    NotMet,
    /// The profile lacks the data to decide.
    Missing,
}

/// One condition, explained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    /// `region`, `window`, or a condition kind.
    pub condition: &'static str,
    /// The outcome.
    pub outcome: Outcome,
    /// The enterprise's value (`null` when missing).
    pub value: Value,
    /// What the policy asks.
    pub threshold: Value,
}

/// A policy's eligibility for one enterprise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eligibility {
    /// True when every condition is met.
    pub eligible: bool,
    /// Every condition in order: the policy's region and window first, then its conditions.
    pub conditions: Vec<Explained>,
    /// The estimated benefit in yuan; `None` when a formula's field is missing.
    pub benefit_yuan: Option<u64>,
}

impl Eligibility {
    /// Conditions not met or missing.
    pub fn unmet(&self) -> impl Iterator<Item = &Explained> {
        self.conditions.iter().filter(|c| c.outcome != Outcome::Met)
    }

    /// A SHA-256 digest of the explanation (hex), to tell one match's reasons from another's.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(&self.conditions).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

fn bounded<T: PartialOrd + Copy + Serialize>(
    condition: &'static str,
    value: Option<T>,
    min: Option<T>,
    max: Option<T>,
) -> Explained {
    let outcome = match value {
        None => Outcome::Missing,
        Some(v) if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) => Outcome::NotMet,
        Some(_) => Outcome::Met,
    };
    Explained {
        condition,
        outcome,
        value: json!(value),
        threshold: json!({ "min": min, "max": max }),
    }
}

fn met_if(b: bool) -> Outcome {
    if b { Outcome::Met } else { Outcome::NotMet }
}

/// Explains one condition for one profile on `today`.
pub fn explain(c: &Condition, p: &Profile, today: Date) -> Explained {
    let name = c.kind();
    match c {
        Condition::RegionWithin { regions } => Explained {
            condition: name,
            outcome: met_if(regions.iter().any(|r| p.region.within(*r))),
            value: json!(p.region),
            threshold: json!(regions),
        },
        Condition::IndustryWithin { codes } => Explained {
            condition: name,
            outcome: match &p.industry {
                None => Outcome::Missing,
                Some(i) => met_if(codes.iter().any(|c| i.within(c))),
            },
            value: json!(p.industry),
            threshold: json!(codes),
        },
        Condition::ScaleIn { scales } => Explained {
            condition: name,
            outcome: match p.scale {
                None => Outcome::Missing,
                Some(s) => met_if(scales.contains(&s)),
            },
            value: json!(p.scale),
            threshold: json!(scales),
        },
        Condition::AgeYears { min, max } => {
            let age = p.founded.map(|f| whole_years(f, today));
            bounded(name, age, min.map(i64::from), max.map(i64::from))
        }
        Condition::RegisteredCapital { min_yuan, max_yuan } => {
            bounded(name, p.registered_capital_yuan, *min_yuan, *max_yuan)
        }
        Condition::Employees { min, max } => bounded(name, p.employees, *min, *max),
        Condition::AnnualRevenue { min_yuan, max_yuan } => {
            bounded(name, p.annual_revenue_yuan, *min_yuan, *max_yuan)
        }
        Condition::TagsAll { tags } => Explained {
            condition: name,
            outcome: met_if(tags.iter().all(|t| p.tags.contains(t))),
            value: json!(p.tags),
            threshold: json!(tags),
        },
        Condition::TagsNone { tags } => Explained {
            condition: name,
            outcome: met_if(!tags.iter().any(|t| p.tags.contains(t))),
            value: json!(p.tags),
            threshold: json!(tags),
        },
        Condition::CreditAtLeast { rating } => Explained {
            condition: name,
            outcome: match p.credit_rating {
                None => Outcome::Missing,
                Some(c) => met_if(c.rank() >= rating.rank()),
            },
            value: json!(p.credit_rating),
            threshold: json!(rating),
        },
    }
}

/// The benefit `policy` gives `profile`, in yuan (`None` when a formula's field is missing).
pub fn benefit(policy: &Policy, p: &Profile) -> Option<u64> {
    match policy.benefit {
        Benefit::Fixed { amount_yuan } => Some(amount_yuan),
        Benefit::None => Some(0),
        Benefit::Formula {
            field,
            rate,
            cap_yuan,
        } => {
            let base = match field {
                FormulaField::AnnualRevenueYuan => p.annual_revenue_yuan,
                FormulaField::RegisteredCapitalYuan => p.registered_capital_yuan,
                FormulaField::Employees => p.employees,
            }?;
            let amount = (base as f64 * rate).floor();
            Some(if amount >= cap_yuan as f64 {
                cap_yuan
            } else {
                amount.max(0.0) as u64
            })
        }
    }
}

/// Evaluates `policy` for `profile` on `today`.
pub fn evaluate(policy: &Policy, profile: &Profile, today: Date) -> Eligibility {
    let mut conditions = Vec::with_capacity(policy.conditions.len() + 2);
    conditions.push(Explained {
        condition: "region",
        outcome: met_if(profile.region.within(policy.region)),
        value: json!(profile.region),
        threshold: json!(policy.region),
    });
    conditions.push(Explained {
        condition: "window",
        outcome: met_if(policy.window.contains(today)),
        value: json!(format_date(today)),
        threshold: json!({ "start": format_date(policy.window.start), "end": format_date(policy.window.end) }),
    });
    conditions.extend(policy.conditions.iter().map(|c| explain(c, profile, today)));
    if policy.category == Category::Publicity {
        // Information only: nothing to be granted or applied for, so no enterprise is eligible
        // (and none is pushed one), whatever its conditions say.
        conditions.push(Explained {
            condition: "category",
            outcome: Outcome::NotMet,
            value: json!(Category::Publicity.as_str()),
            threshold: json!([Category::Automatic.as_str(), Category::Online.as_str()]),
        });
    }
    Eligibility {
        eligible: conditions.iter().all(|c| c.outcome == Outcome::Met),
        conditions,
        benefit_yuan: benefit(policy, profile),
    }
}

/// True when `policy` holds for `profile` on `today`, without building the explanation.
pub fn is_eligible(policy: &Policy, p: &Profile, today: Date) -> bool {
    decide(policy, p, today)
}

/// [`is_eligible`] on the facts of a profile, whatever their layout.
pub fn decide(policy: &Policy, p: &impl Facts, today: Date) -> bool {
    policy.category != Category::Publicity
        && p.region().within(policy.region)
        && policy.window.contains(today)
        && policy.conditions.iter().all(|c| holds(c, p, today))
}

/// What a decision reads of an enterprise: the [`Profile`] itself, or its [`CompactFacts`]
/// (the same facts in one small block of memory, for deciding many profiles at a time).
pub trait Facts {
    /// The division.
    fn region(&self) -> Region;
    /// The GB/T 4754 code, when known.
    fn industry(&self) -> Option<&str>;
    /// The size class, when known.
    fn scale(&self) -> Option<Scale>;
    /// The founding date, when known.
    fn founded(&self) -> Option<Date>;
    /// Registered capital in yuan, when known.
    fn registered_capital_yuan(&self) -> Option<u64>;
    /// Employees, when known.
    fn employees(&self) -> Option<u64>;
    /// Annual revenue in yuan, when known.
    fn annual_revenue_yuan(&self) -> Option<u64>;
    /// Whether it carries `tag`.
    fn has_tag(&self, tag: Tag) -> bool;
    /// The tax credit rating, when known.
    fn credit_rating(&self) -> Option<Credit>;
}

/// The [`Facts`] a type holds as fields of the same names.
macro_rules! facts_held_as_fields {
    () => {
        fn region(&self) -> Region {
            self.region
        }
        fn scale(&self) -> Option<Scale> {
            self.scale
        }
        fn founded(&self) -> Option<Date> {
            self.founded
        }
        fn registered_capital_yuan(&self) -> Option<u64> {
            self.registered_capital_yuan
        }
        fn employees(&self) -> Option<u64> {
            self.employees
        }
        fn annual_revenue_yuan(&self) -> Option<u64> {
            self.annual_revenue_yuan
        }
        fn credit_rating(&self) -> Option<Credit> {
            self.credit_rating
        }
    };
}

impl Facts for Profile {
    facts_held_as_fields!();
    fn industry(&self) -> Option<&str> {
        self.industry.as_ref().map(Industry::as_str)
    }
    fn has_tag(&self, tag: Tag) -> bool {
        self.tags.contains(&tag)
    }
}

/// Tags a [`CompactFacts`] holds as bits: the first this many of the vocabulary (the shipped
/// ones among them).
const TAG_BITS: usize = 64;

/// Longest GB/T 4754 code (`C3911`).
const INDUSTRY_LEN: usize = 5;

/// A profile's facts for deciding, in one block of memory with no pointer to follow: tags as
/// bits, the industry code inline. Deciding a policy for a million profiles reads these one
/// after another instead of a million scattered profiles. [`CompactFacts::of`] gives `None`
/// for a profile it cannot hold (a tag beyond the first [`TAG_BITS`] of the vocabulary): such a
/// profile is decided on itself.
#[derive(Debug, Clone, Copy)]
pub struct CompactFacts {
    region: Region,
    founded: Option<Date>,
    registered_capital_yuan: Option<u64>,
    employees: Option<u64>,
    annual_revenue_yuan: Option<u64>,
    tags: u64,
    industry: [u8; INDUSTRY_LEN],
    industry_len: u8,
    scale: Option<Scale>,
    credit_rating: Option<Credit>,
}

impl CompactFacts {
    /// The facts of `p`, or `None` when they do not fit.
    pub fn of(p: &Profile) -> Option<CompactFacts> {
        let mut tags = 0u64;
        for t in &p.tags {
            let bit = t.index();
            if bit >= TAG_BITS {
                return None;
            }
            tags |= 1 << bit;
        }
        let mut industry = [0u8; INDUSTRY_LEN];
        let code = p.industry.as_ref().map_or("", Industry::as_str).as_bytes();
        if code.len() > INDUSTRY_LEN {
            return None;
        }
        industry[..code.len()].copy_from_slice(code);
        Some(CompactFacts {
            region: p.region,
            founded: p.founded,
            registered_capital_yuan: p.registered_capital_yuan,
            employees: p.employees,
            annual_revenue_yuan: p.annual_revenue_yuan,
            tags,
            industry,
            industry_len: code.len() as u8,
            scale: p.scale,
            credit_rating: p.credit_rating,
        })
    }
}

impl Facts for CompactFacts {
    facts_held_as_fields!();
    fn industry(&self) -> Option<&str> {
        let code = self.industry.get(..usize::from(self.industry_len))?;
        std::str::from_utf8(code).ok().filter(|c| !c.is_empty())
    }
    fn has_tag(&self, tag: Tag) -> bool {
        // A tag beyond the bits is one no compact profile carries (`CompactFacts::of`).
        let bit = tag.index();
        bit < TAG_BITS && self.tags & (1 << bit) != 0
    }
}

/// Whether the region condition holds, and how many of the other conditions (window
/// included) do not: without building the explanation.
pub fn unmet_count(policy: &Policy, p: &Profile, today: Date) -> (bool, usize) {
    let region = p.region.within(policy.region);
    let unmet = usize::from(!policy.window.contains(today))
        + policy
            .conditions
            .iter()
            .filter(|c| !holds(c, p, today))
            .count();
    (region, unmet)
}

fn within<T: PartialOrd>(v: Option<T>, min: Option<T>, max: Option<T>) -> bool {
    v.is_some_and(|v| min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m))
}

fn holds(c: &Condition, p: &impl Facts, today: Date) -> bool {
    match c {
        Condition::RegionWithin { regions } => regions.iter().any(|r| p.region().within(*r)),
        Condition::IndustryWithin { codes } => p
            .industry()
            .is_some_and(|i| codes.iter().any(|c| Industry::code_within(i, c))),
        Condition::ScaleIn { scales } => p.scale().is_some_and(|s| scales.contains(&s)),
        Condition::AgeYears { min, max } => within(
            p.founded().map(|f| whole_years(f, today)),
            min.map(i64::from),
            max.map(i64::from),
        ),
        Condition::RegisteredCapital { min_yuan, max_yuan } => {
            within(p.registered_capital_yuan(), *min_yuan, *max_yuan)
        }
        Condition::Employees { min, max } => within(p.employees(), *min, *max),
        Condition::AnnualRevenue { min_yuan, max_yuan } => {
            within(p.annual_revenue_yuan(), *min_yuan, *max_yuan)
        }
        Condition::TagsAll { tags } => tags.iter().all(|t| p.has_tag(*t)),
        Condition::TagsNone { tags } => !tags.iter().any(|t| p.has_tag(*t)),
        Condition::CreditAtLeast { rating } => {
            p.credit_rating().is_some_and(|c| c.rank() >= rating.rank())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> Date {
        Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).unwrap()
    }

    fn policy() -> Policy {
        Policy::from_json(
            r#"{"id":"P-1","version":1,"title":"t","issuer":"i","region":"110000","category":"在线办理",
            "window":{"start":"2026-01-01","end":"2026-12-31"},
            "benefit":{"kind":"formula","field":"employees","rate":1500,"cap_yuan":100000},"text":"",
            "conditions":[{"kind":"scale_in","scales":["中","小"]},{"kind":"age_years","min":2,"max":10},
              {"kind":"annual_revenue","min_yuan":1000000},{"kind":"tags_all","tags":["专精特新"]},
              {"kind":"tags_none","tags":["失信被执行人"]},{"kind":"credit_at_least","rating":"B"},
              {"kind":"industry_within","codes":["C39","I65"]}]}"#,
        )
        .unwrap()
    }

    fn profile() -> Profile {
        Profile::from_json(
            r#"{"uscc":"91110108551385082Q","name":"x","region":"110108","industry":"C3911","scale":"小",
            "founded":"2020-05-01","annual_revenue_yuan":5000000,"employees":40,"tags":["专精特新"],
            "credit_rating":"M","updated":"2026-11-01"}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_publicity_policy_is_no_enterprise_s_to_claim() {
        let mut p = policy();
        p.category = Category::Publicity;
        p.conditions.clear();
        let e = evaluate(&p, &profile(), day("2026-11-27"));
        assert!(!e.eligible);
        let last = e.conditions.last().unwrap();
        assert_eq!(
            (last.condition, last.outcome),
            ("category", Outcome::NotMet)
        );
        assert_eq!(last.value, json!("宣传展示"));
        assert!(!is_eligible(&p, &profile(), day("2026-11-27")));
        // The same policy to apply for online is everyone's in its region and window.
        p.category = Category::Online;
        assert!(evaluate(&p, &profile(), day("2026-11-27")).eligible);
        assert!(is_eligible(&p, &profile(), day("2026-11-27")));
    }

    #[test]
    fn every_condition_is_explained_with_value_and_threshold() {
        let e = evaluate(&policy(), &profile(), day("2026-11-27"));
        let by: std::collections::HashMap<_, _> =
            e.conditions.iter().map(|c| (c.condition, c)).collect();
        assert_eq!(by["region"].outcome, Outcome::Met);
        assert_eq!(by["window"].outcome, Outcome::Met);
        assert_eq!(by["scale_in"].outcome, Outcome::Met);
        assert_eq!(by["age_years"].value, json!(6));
        assert_eq!(by["age_years"].threshold, json!({"min": 2, "max": 10}));
        assert_eq!(by["credit_at_least"].outcome, Outcome::NotMet);
        assert_eq!(by["credit_at_least"].value, json!("M"));
        assert!(!e.eligible);
        assert_eq!(e.unmet().count(), 1);
        assert_eq!(e.benefit_yuan, Some(60_000));
        assert!(!is_eligible(&policy(), &profile(), day("2026-11-27")));
    }

    #[test]
    fn missing_data_is_missing_not_unmet() {
        let mut p = profile();
        p.credit_rating = None;
        p.founded = None;
        p.employees = None;
        let e = evaluate(&policy(), &p, day("2026-11-27"));
        let missing: Vec<_> = e
            .conditions
            .iter()
            .filter(|c| c.outcome == Outcome::Missing)
            .map(|c| c.condition)
            .collect();
        assert_eq!(missing, ["age_years", "credit_at_least"]);
        assert_eq!(e.benefit_yuan, None);
    }

    #[test]
    fn the_fast_path_agrees_with_the_explanation() {
        let mut p = profile();
        p.credit_rating = Some(crate::codes::Credit::A);
        for today in ["2026-11-27", "2027-01-01", "2022-06-01", "2030-06-01"] {
            let d = day(today);
            assert_eq!(
                is_eligible(&policy(), &p, d),
                evaluate(&policy(), &p, d).eligible,
                "{today}"
            );
        }
        assert!(is_eligible(&policy(), &p, day("2026-11-27")));
        assert_eq!(benefit(&policy(), &p), Some(60_000));
        p.employees = Some(1000);
        assert_eq!(benefit(&policy(), &p), Some(100_000), "capped");
    }

    #[test]
    fn compact_facts_decide_as_the_profile_does() {
        let policies: Vec<Policy> = crate::SAMPLE_POLICIES
            .lines()
            .map(|l| Policy::from_json(l).unwrap())
            .collect();
        let mut decided = [0usize; 2];
        for p in crate::generate::population(3_000, 9, day("2026-11-01")) {
            let compact = CompactFacts::of(&p).unwrap();
            for today in ["2026-11-27", "2027-03-01", "2031-01-01"] {
                for policy in &policies {
                    let d = day(today);
                    let want = is_eligible(policy, &p, d);
                    assert_eq!(
                        decide(policy, &compact, d),
                        want,
                        "{} {}",
                        policy.id,
                        p.uscc
                    );
                    decided[usize::from(want)] += 1;
                }
            }
        }
        assert!(decided[0] > 1000 && decided[1] > 1000, "{decided:?}");
        // Industry codes of every length, and none.
        let mut p = profile();
        for code in [None, Some("C"), Some("C39"), Some("C391"), Some("C3911")] {
            p.industry = code.map(|c| crate::codes::Industry::parse(c).unwrap());
            let compact = CompactFacts::of(&p).unwrap();
            assert_eq!(Facts::industry(&compact), code);
            for d in ["2026-11-27", "2022-06-01"] {
                assert_eq!(
                    decide(&policy(), &compact, day(d)),
                    is_eligible(&policy(), &p, day(d))
                );
            }
        }
    }

    #[test]
    fn a_profile_with_a_tag_beyond_the_bits_is_decided_on_itself() {
        // Local tags past the 64 bits of the compact form.
        let local: String = (0..TAG_BITS)
            .map(|i| format!("紧凑测试标签{i:02}\t资质认定\t某区\t某文件\t\t用于测试\n"))
            .collect();
        crate::tags::declare_local(&local).unwrap();
        let far = Tag::parse(&format!("紧凑测试标签{:02}", TAG_BITS - 1)).unwrap();
        assert!(far.index() >= TAG_BITS, "{}", far.index());
        let mut p = profile();
        p.tags.insert(far);
        assert!(CompactFacts::of(&p).is_none());
        // A compact profile does not carry a tag beyond the bits.
        p.tags.remove(&far);
        let compact = CompactFacts::of(&p).unwrap();
        assert!(!compact.has_tag(far));
        let mut only_far = policy();
        only_far.conditions = vec![Condition::TagsNone { tags: vec![far] }];
        assert_eq!(
            decide(&only_far, &compact, day("2026-11-27")),
            is_eligible(&only_far, &p, day("2026-11-27"))
        );
    }
}
