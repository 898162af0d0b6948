//! Policies, their conditions and benefits, and enterprise profiles. JSON in, validated types
//! out: a bad value is refused with the field named (`conditions[2].min_yuan`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::Date;

use crate::codes::{Credit, Industry, Region, Scale, Tag};

/// Why a policy or a profile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct InvalidField {
    /// The field at fault, e.g. `conditions[1].scales[0]`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses JSON into `T`, naming the field at fault.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, InvalidField> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "(document)".to_owned()
        } else {
            path
        };
        invalid(field, e.inner().to_string())
    })
}

/// A fault of a document: the field, why, and the value found there (compact JSON, cut to 80
/// characters; none for a missing field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The field and why.
    pub error: InvalidField,
    /// What the document held there.
    pub value: Option<String>,
}

/// A step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    Key(String),
    Index(usize),
}

fn path_text(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Reads a field path as this module writes it (`conditions[1].regions[0]`).
fn parse_path(text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in text.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            steps.push(Step::Key(key.to_owned()));
        }
        for index in pieces {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(i));
            }
        }
    }
    steps
}

fn value_at<'v>(value: &'v serde_json::Value, path: &[Step]) -> Option<&'v serde_json::Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn shown(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 80 {
        text
    } else {
        text.chars().take(79).chain(['…']).collect()
    }
}

/// Parses JSON into `T` and reports every fault, not only the first: after each one serde
/// names, the value at fault is set aside (an array item or optional field removed, a
/// required top-level field given `placeholders`' harmless value) and the document read again;
/// then `validate` runs on what was read, and its faults inside a part set aside are dropped.
/// Paths always name the document as written.
pub fn from_json_every_fault<T: serde::de::DeserializeOwned>(
    text: &str,
    placeholders: &[(&str, serde_json::Value)],
    validate: impl Fn(&T) -> Vec<InvalidField>,
) -> Result<T, Vec<Fault>> {
    use serde_json::Value;
    use std::collections::HashMap;

    // A good line (nearly every line of an import) is read once, straight into `T`; only a
    // line with a fault is read again to find all of them.
    let read_directly = match serde_json::from_str::<T>(text) {
        Ok(read) if validate(&read).is_empty() => return Ok(read),
        Ok(_) => true,
        Err(_) => false,
    };
    let original: Value = serde_json::from_str(text).map_err(|e| {
        let reason = e.to_string();
        let reason = reason
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned();
        vec![Fault {
            error: invalid(
                "(document)",
                format!("not JSON: {reason} (column {})", e.column()),
            ),
            value: None,
        }]
    })?;
    if !original.is_object() {
        return Err(vec![Fault {
            error: invalid("(document)", "a JSON object is expected"),
            value: Some(shown(&original)),
        }]);
    }
    let mut doc = original.clone();
    let mut faults: Vec<Fault> = Vec::new();
    // Original indices taken out of each array (by its original path).
    let mut removed: HashMap<Vec<Step>, Vec<usize>> = HashMap::new();
    // Original paths set aside.
    let mut set_aside: Vec<Vec<Step>> = Vec::new();
    let to_original = |removed: &HashMap<Vec<Step>, Vec<usize>>, path: &[Step]| -> Vec<Step> {
        let mut out = Vec::new();
        for step in path {
            match step {
                Step::Index(i) => {
                    let gone = removed.get(&out).map(Vec::as_slice).unwrap_or(&[]);
                    let original = (0..).filter(|j| !gone.contains(j)).nth(*i).unwrap_or(*i);
                    out.push(Step::Index(original));
                }
                key => out.push(key.clone()),
            }
        }
        out
    };
    let fault_at = |path: &[Step], reason: String| Fault {
        error: invalid(
            if path.is_empty() {
                "(document)".to_owned()
            } else {
                path_text(path)
            },
            reason,
        ),
        value: value_at(&original, path).map(shown),
    };
    // Sets the value at `path` (in the document as now read) aside; false when nothing can be.
    let set_aside_at = |doc: &mut Value,
                        removed: &mut HashMap<Vec<Step>, Vec<usize>>,
                        set_aside: &mut Vec<Vec<Step>>,
                        path: &[Step]|
     -> bool {
        let Some((last, parent)) = path.split_last() else {
            return false;
        };
        let original = to_original(removed, path);
        let Some(holder) = parent.iter().try_fold(&mut *doc, |v, step| match step {
            Step::Key(k) => v.get_mut(k),
            Step::Index(i) => v.get_mut(*i),
        }) else {
            return false;
        };
        let done = match (last, holder) {
            (Step::Key(k), Value::Object(map)) if parent.is_empty() => {
                match placeholders.iter().find(|(name, _)| name == k) {
                    Some((_, placeholder)) => {
                        map.insert(k.clone(), placeholder.clone());
                        true
                    }
                    None => map.remove(k).is_some(),
                }
            }
            (Step::Key(k), Value::Object(map)) => map.remove(k).is_some(),
            (Step::Index(i), Value::Array(items)) if *i < items.len() => {
                items.remove(*i);
                if let Some(Step::Index(o)) = original.last() {
                    removed
                        .entry(original[..original.len() - 1].to_vec())
                        .or_default()
                        .push(*o);
                }
                true
            }
            _ => false,
        };
        if done {
            set_aside.push(original);
        }
        done
    };
    for _ in 0..100 {
        let error = match serde_path_to_error::deserialize::<_, T>(&doc) {
            Ok(read) => {
                let inside_set_aside = |field: &[Step]| {
                    set_aside
                        .iter()
                        .any(|gone| gone.starts_with(field) || field.starts_with(gone))
                };
                for e in validate(&read) {
                    let path = to_original(&removed, &parse_path(&e.field));
                    if !inside_set_aside(&path) {
                        faults.push(fault_at(&path, e.reason));
                    }
                }
                if faults.is_empty() && !read_directly {
                    // What only the text shows (a key given twice, which a JSON value keeps
                    // once): the direct reading's fault.
                    if let Err(e) = from_json::<T>(text) {
                        faults.push(Fault {
                            error: e,
                            value: None,
                        });
                    }
                }
                return if faults.is_empty() {
                    Ok(read)
                } else {
                    Err(faults)
                };
            }
            Err(e) => e,
        };
        let path: Vec<Step> = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
                _ => None,
            })
            .collect();
        let reason = error.inner().to_string();
        let missing = reason
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
            .map(str::to_owned);
        let original_path = to_original(&removed, &path);
        match missing {
            // A missing field of the document itself: named, then given its placeholder.
            Some(field) if path.is_empty() => {
                faults.push(Fault {
                    error: invalid(field.clone(), "missing"),
                    value: None,
                });
                let Some((_, placeholder)) = placeholders.iter().find(|(n, _)| *n == field) else {
                    return Err(faults);
                };
                if let Value::Object(map) = &mut doc {
                    map.insert(field, placeholder.clone());
                }
                continue;
            }
            // A field missing inside a part: named unless it was set aside here; the part
            // is set aside.
            Some(field) => {
                if !set_aside
                    .iter()
                    .any(|gone| gone.starts_with(&original_path))
                {
                    let mut at = original_path.clone();
                    at.push(Step::Key(field));
                    faults.push(Fault {
                        error: invalid(path_text(&at), "missing"),
                        value: None,
                    });
                }
            }
            // A fault of a part something was set aside from follows from that: not named.
            None if set_aside.iter().any(|gone| {
                gone.len() > original_path.len() && gone.starts_with(&original_path)
            }) => {}
            None => faults.push(fault_at(&original_path, reason)),
        }
        if !set_aside_at(&mut doc, &mut removed, &mut set_aside, &path) {
            return Err(faults);
        }
    }
    faults.push(Fault {
        error: invalid(
            "(document)",
            "more faults than are checked in one line (100)",
        ),
        value: None,
    });
    Err(faults)
}

mod iso_date {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;
    use time::macros::format_description;

    const FORMAT: &[time::format_description::FormatItem<'static>] =
        format_description!("[year]-[month]-[day]");

    pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.format(&FORMAT).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<Date, String> {
        Date::parse(s, &FORMAT).map_err(|_| {
            format!(
                "`{}` is not a date YYYY-MM-DD",
                s.chars().take(20).collect::<String>()
            )
        })
    }

    pub fn format(d: Date) -> String {
        d.format(&FORMAT).unwrap_or_default()
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
            Ok(Some(super::deserialize(d)?))
        }
    }
}

pub use iso_date::format as format_date;
pub use iso_date::parse as parse_date;

/// A policy category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    /// 免申即享: granted without application.
    #[serde(rename = "免申即享")]
    Automatic,
    /// 在线办理: applied for online.
    #[serde(rename = "在线办理")]
    Online,
    /// 宣传展示: information only.
    #[serde(rename = "宣传展示")]
    Publicity,
}

impl Category {
    /// The Chinese name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Automatic => "免申即享",
            Category::Online => "在线办理",
            Category::Publicity => "宣传展示",
        }
    }

    /// Ranking weight: money that arrives by itself first.
    pub fn rank(self) -> u8 {
        match self {
            Category::Automatic => 3,
            Category::Online => 2,
            Category::Publicity => 1,
        }
    }
}

/// The application window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// First day.
    #[serde(with = "iso_date")]
    pub start: Date,
    /// Last day.
    #[serde(with = "iso_date")]
    pub end: Date,
}

impl Window {
    /// True when `day` is within the window.
    pub fn contains(&self, day: Date) -> bool {
        self.start <= day && day <= self.end
    }
}

/// A profile field a benefit formula may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormulaField {
    /// Annual revenue in yuan.
    AnnualRevenueYuan,
    /// Registered capital in yuan.
    RegisteredCapitalYuan,
    /// Employees.
    Employees,
}

/// What a policy grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "FlatBenefit")]
pub enum Benefit {
    /// A fixed amount.
    Fixed {
        /// Yuan.
        amount_yuan: u64,
    },
    /// `field × rate`, at most `cap_yuan`.
    Formula {
        /// The profile field.
        field: FormulaField,
        /// Yuan per unit of the field.
        rate: f64,
        /// Upper bound.
        cap_yuan: u64,
    },
    /// No money (information, services).
    None,
}

/// One condition of a policy. All must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "FlatCondition")]
pub enum Condition {
    /// The enterprise is registered within one of these regions.
    RegionWithin {
        /// Regions.
        regions: Vec<Region>,
    },
    /// The enterprise's industry is within one of these codes.
    IndustryWithin {
        /// GB/T 4754-2017 codes or prefixes.
        codes: Vec<Industry>,
    },
    /// The enterprise's scale is one of these.
    ScaleIn {
        /// Scales.
        scales: Vec<Scale>,
    },
    /// Whole years since founding, within bounds.
    AgeYears {
        /// At least.
        min: Option<u32>,
        /// At most.
        max: Option<u32>,
    },
    /// Registered capital in yuan, within bounds.
    RegisteredCapital {
        /// At least.
        min_yuan: Option<u64>,
        /// At most.
        max_yuan: Option<u64>,
    },
    /// Employees, within bounds.
    Employees {
        /// At least.
        min: Option<u64>,
        /// At most.
        max: Option<u64>,
    },
    /// Annual revenue in yuan, within bounds.
    AnnualRevenue {
        /// At least.
        min_yuan: Option<u64>,
        /// At most.
        max_yuan: Option<u64>,
    },
    /// The enterprise has every one of these tags.
    TagsAll {
        /// Tags.
        tags: Vec<Tag>,
    },
    /// The enterprise has none of these tags.
    TagsNone {
        /// Tags.
        tags: Vec<Tag>,
    },
    /// The tax credit rating is at least this.
    CreditAtLeast {
        /// Rating.
        rating: Credit,
    },
}

// Internally tagged enums are buffered by serde, which hides the path of an error inside
// them; these flat forms keep it (`conditions[0].scales[1]`), and the conversion checks that
// each kind has its fields and no others.

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum BenefitKind {
    Fixed,
    Formula,
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatBenefit {
    kind: BenefitKind,
    amount_yuan: Option<u64>,
    field: Option<FormulaField>,
    rate: Option<f64>,
    cap_yuan: Option<u64>,
}

impl TryFrom<FlatBenefit> for Benefit {
    type Error = String;

    fn try_from(f: FlatBenefit) -> Result<Self, String> {
        let need = |name: &str| format!("this kind of benefit needs `{name}`");
        match f.kind {
            BenefitKind::Fixed if f.field.is_none() && f.rate.is_none() && f.cap_yuan.is_none() => {
                Ok(Benefit::Fixed {
                    amount_yuan: f.amount_yuan.ok_or_else(|| need("amount_yuan"))?,
                })
            }
            BenefitKind::Formula if f.amount_yuan.is_none() => Ok(Benefit::Formula {
                field: f.field.ok_or_else(|| need("field"))?,
                rate: f.rate.ok_or_else(|| need("rate"))?,
                cap_yuan: f.cap_yuan.ok_or_else(|| need("cap_yuan"))?,
            }),
            BenefitKind::None
                if f.amount_yuan.is_none()
                    && f.field.is_none()
                    && f.rate.is_none()
                    && f.cap_yuan.is_none() =>
            {
                Ok(Benefit::None)
            }
            _ => Err("fields that do not belong to this kind of benefit".into()),
        }
    }
}

#[derive(Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ConditionKind {
    RegionWithin,
    IndustryWithin,
    ScaleIn,
    AgeYears,
    RegisteredCapital,
    Employees,
    AnnualRevenue,
    TagsAll,
    TagsNone,
    CreditAtLeast,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatCondition {
    kind: ConditionKind,
    regions: Option<Vec<Region>>,
    codes: Option<Vec<Industry>>,
    scales: Option<Vec<Scale>>,
    min: Option<u64>,
    max: Option<u64>,
    min_yuan: Option<u64>,
    max_yuan: Option<u64>,
    tags: Option<Vec<Tag>>,
    rating: Option<Credit>,
}

impl TryFrom<FlatCondition> for Condition {
    type Error = String;

    fn try_from(f: FlatCondition) -> Result<Self, String> {
        use ConditionKind as K;
        let present = [
            ("regions", f.regions.is_some(), K::RegionWithin),
            ("codes", f.codes.is_some(), K::IndustryWithin),
            ("scales", f.scales.is_some(), K::ScaleIn),
            ("tags", f.tags.is_some(), K::TagsAll),
            ("rating", f.rating.is_some(), K::CreditAtLeast),
        ];
        for (name, is, kind) in present {
            let belongs = f.kind == kind || (name == "tags" && f.kind == K::TagsNone);
            if is && !belongs {
                return Err(format!(
                    "`{name}` does not belong to this kind of condition"
                ));
            }
        }
        let bounded = matches!(f.kind, K::AgeYears | K::Employees);
        let yuan = matches!(f.kind, K::RegisteredCapital | K::AnnualRevenue);
        if (f.min.is_some() || f.max.is_some()) && !bounded {
            return Err("`min`/`max` do not belong to this kind of condition".into());
        }
        if (f.min_yuan.is_some() || f.max_yuan.is_some()) && !yuan {
            return Err("`min_yuan`/`max_yuan` do not belong to this kind of condition".into());
        }
        let need = |name: &str| format!("this kind of condition needs `{name}`");
        let years = |v: Option<u64>| -> Result<Option<u32>, String> {
            v.map(|y| {
                u32::try_from(y)
                    .ok()
                    .filter(|y| *y <= 200)
                    .ok_or_else(|| "an age is at most 200 years".to_owned())
            })
            .transpose()
        };
        Ok(match f.kind {
            K::RegionWithin => Condition::RegionWithin {
                regions: f.regions.ok_or_else(|| need("regions"))?,
            },
            K::IndustryWithin => Condition::IndustryWithin {
                codes: f.codes.ok_or_else(|| need("codes"))?,
            },
            K::ScaleIn => Condition::ScaleIn {
                scales: f.scales.ok_or_else(|| need("scales"))?,
            },
            K::AgeYears => Condition::AgeYears {
                min: years(f.min)?,
                max: years(f.max)?,
            },
            K::RegisteredCapital => Condition::RegisteredCapital {
                min_yuan: f.min_yuan,
                max_yuan: f.max_yuan,
            },
            K::Employees => Condition::Employees {
                min: f.min,
                max: f.max,
            },
            K::AnnualRevenue => Condition::AnnualRevenue {
                min_yuan: f.min_yuan,
                max_yuan: f.max_yuan,
            },
            K::TagsAll => Condition::TagsAll {
                tags: f.tags.ok_or_else(|| need("tags"))?,
            },
            K::TagsNone => Condition::TagsNone {
                tags: f.tags.ok_or_else(|| need("tags"))?,
            },
            K::CreditAtLeast => Condition::CreditAtLeast {
                rating: f.rating.ok_or_else(|| need("rating"))?,
            },
        })
    }
}

impl Condition {
    /// The condition's kind, as in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::RegionWithin { .. } => "region_within",
            Condition::IndustryWithin { .. } => "industry_within",
            Condition::ScaleIn { .. } => "scale_in",
            Condition::AgeYears { .. } => "age_years",
            Condition::RegisteredCapital { .. } => "registered_capital",
            Condition::Employees { .. } => "employees",
            Condition::AnnualRevenue { .. } => "annual_revenue",
            Condition::TagsAll { .. } => "tags_all",
            Condition::TagsNone { .. } => "tags_none",
            Condition::CreditAtLeast { .. } => "credit_at_least",
        }
    }
}

/// An enterprise-support policy (惠企政策).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Id (`A-Z a-z 0-9 -`, at most 40).
    pub id: String,
    /// Version, from 1; a changed policy gets a higher one.
    pub version: u32,
    /// Title.
    pub title: String,
    /// Issuing department.
    pub issuer: String,
    /// The region it covers (with everything inside it).
    pub region: Region,
    /// Category.
    pub category: Category,
    /// Application window.
    pub window: Window,
    /// What it grants.
    pub benefit: Benefit,
    /// Full text.
    pub text: String,
    /// Conditions, all of which must hold (besides the region).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Policy {
    /// Parses and validates one policy.
    pub fn from_json(text: &str) -> Result<Policy, InvalidField> {
        let p: Policy = from_json(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Parses a policy, reporting every fault.
    pub fn from_json_every_fault(text: &str) -> Result<Policy, Vec<Fault>> {
        use serde_json::json;
        from_json_every_fault(
            text,
            &[
                ("id", json!("P-0")),
                ("version", json!(1)),
                ("title", json!("-")),
                ("issuer", json!("-")),
                ("region", json!("000000")),
                ("category", json!("在线办理")),
                (
                    "window",
                    json!({"start": "2000-01-01", "end": "2999-12-31"}),
                ),
                ("benefit", json!({"kind": "none"})),
                ("text", json!("")),
                ("conditions", json!([])),
            ],
            Policy::validate_all,
        )
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), InvalidField> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every check serde cannot make, each fault reported.
    pub fn validate_all(&self) -> Vec<InvalidField> {
        let mut faults = Vec::new();
        let mut fault = |field: String, reason: String| faults.push(invalid(field, reason));
        if !is_id(&self.id) {
            fault("id".into(), "1-40 of A-Z a-z 0-9 -".into());
        }
        if self.version == 0 {
            fault("version".into(), "starts at 1".into());
        }
        let chars = |s: &str| s.trim().chars().count();
        if !(1..=200).contains(&chars(&self.title)) {
            fault("title".into(), "1 to 200 characters".into());
        }
        if !(1..=100).contains(&chars(&self.issuer)) {
            fault("issuer".into(), "1 to 100 characters".into());
        }
        if chars(&self.text) > 50_000 {
            fault("text".into(), "at most 50000 characters".into());
        }
        if self.window.start > self.window.end {
            fault("window.end".into(), "before window.start".into());
        }
        if let Benefit::Formula { rate, .. } = self.benefit
            && !(rate.is_finite() && rate > 0.0)
        {
            fault("benefit.rate".into(), "a positive number".into());
        }
        if self.conditions.len() > 32 {
            fault("conditions".into(), "at most 32".into());
        }
        for (i, c) in self.conditions.iter().enumerate() {
            let f = |name: &str| format!("conditions[{i}].{name}");
            let bounds = |name: &str, min: Option<u64>, max: Option<u64>| match (min, max) {
                (None, None) => Some((f(name), "give min, max or both".to_owned())),
                (Some(a), Some(b)) if a > b => {
                    Some((f(name), format!("min {a} is greater than max {b}")))
                }
                _ => None,
            };
            let fault_here = match c {
                Condition::RegionWithin { regions } if regions.is_empty() => {
                    Some((f("regions"), "name at least one".to_owned()))
                }
                Condition::RegionWithin { regions } => {
                    for (j, r) in regions.iter().enumerate() {
                        if !r.within(self.region) {
                            fault(
                                format!("conditions[{i}].regions[{j}]"),
                                format!("{r} is not inside the policy's region {}", self.region),
                            );
                        }
                    }
                    None
                }
                Condition::IndustryWithin { codes } if codes.is_empty() => {
                    Some((f("codes"), "name at least one".to_owned()))
                }
                Condition::ScaleIn { scales } if scales.is_empty() => {
                    Some((f("scales"), "name at least one".to_owned()))
                }
                Condition::TagsAll { tags } | Condition::TagsNone { tags } if tags.is_empty() => {
                    Some((f("tags"), "name at least one".to_owned()))
                }
                Condition::AgeYears { min, max } => {
                    bounds("min", min.map(u64::from), max.map(u64::from))
                }
                Condition::Employees { min, max } => bounds("min", *min, *max),
                Condition::RegisteredCapital { min_yuan, max_yuan }
                | Condition::AnnualRevenue { min_yuan, max_yuan } => {
                    bounds("min_yuan", *min_yuan, *max_yuan)
                }
                _ => None,
            };
            if let Some((field, reason)) = fault_here {
                fault(field, reason);
            }
        }
        faults
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Unified social credit code.
    pub uscc: cert_store::Uscc,
    /// Name.
    pub name: String,
    /// Where it is registered.
    pub region: Region,
    /// Its industry class (GB/T 4754-2017), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industry: Option<Industry>,
    /// Its scale, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
    /// Founding date, when known.
    #[serde(
        default,
        with = "iso_date::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub founded: Option<Date>,
    /// Registered capital in yuan, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_capital_yuan: Option<u64>,
    /// Employees, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employees: Option<u64>,
    /// Annual revenue in yuan, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annual_revenue_yuan: Option<u64>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeSet<Tag>,
    /// Tax credit rating, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_rating: Option<Credit>,
    /// Business scope (经营范围), for relevance ranking.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub business_scope: String,
    /// When the data department last updated it.
    #[serde(with = "iso_date")]
    pub updated: Date,
}

impl Profile {
    /// Parses and validates one profile.
    pub fn from_json(text: &str) -> Result<Profile, InvalidField> {
        let p: Profile = from_json(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Parses a profile, reporting every fault.
    pub fn from_json_every_fault(text: &str) -> Result<Profile, Vec<Fault>> {
        use serde_json::json;
        from_json_every_fault(
            text,
            &[
                ("uscc", json!("91110108551385082Q")),
                ("name", json!("-")),
                ("region", json!("110101")),
                ("updated", json!("2999-12-31")),
            ],
            Profile::validate_all,
        )
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), InvalidField> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every check serde cannot make, each fault reported.
    pub fn validate_all(&self) -> Vec<InvalidField> {
        let mut faults = Vec::new();
        let n = self.name.trim().chars().count();
        if !(1..=200).contains(&n) {
            faults.push(invalid("name", "1 to 200 characters"));
        }
        if self.business_scope.chars().count() > 2000 {
            faults.push(invalid("business_scope", "at most 2000 characters"));
        }
        if self.region == Region::NATION {
            faults.push(invalid(
                "region",
                "an enterprise is registered in a province, city or district",
            ));
        }
        if self.founded.is_some_and(|f| f > self.updated) {
            faults.push(invalid("founded", "after the profile's update date"));
        }
        faults
    }
}

/// Whole years from `from` to `to` (0 before the first anniversary).
pub fn whole_years(from: Date, to: Date) -> i64 {
    let mut years = i64::from(to.year()) - i64::from(from.year());
    if (to.month() as u8, to.day()) < (from.month() as u8, from.day()) {
        years -= 1;
    }
    years
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{"id":"P-1","version":1,"title":"专精特新奖励","issuer":"某局",
        "region":"110000","category":"免申即享","window":{"start":"2026-01-01","end":"2026-12-31"},
        "benefit":{"kind":"fixed","amount_yuan":100000},"text":"…",
        "conditions":[{"kind":"scale_in","scales":["中","小"]},{"kind":"age_years","min":2},
          {"kind":"region_within","regions":["110108"]}]}"#;

    #[test]
    fn a_policy_parses() {
        let p = Policy::from_json(POLICY).unwrap();
        assert_eq!(p.conditions.len(), 3);
        assert_eq!(p.category, Category::Automatic);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let cases = [
            (
                r#""scales":["中","小"]"#,
                r#""scales":["中","巨"]"#,
                "conditions[0].scales[1]",
            ),
            (r#""min":2}"#, r#""min":2,"max":1}"#, "conditions[1].min"),
            (r#""min":2}"#, r#""minimum":2}"#, "conditions[1].minimum"),
            (
                r#""regions":["110108"]"#,
                r#""regions":["310115"]"#,
                "conditions[2].regions[0]",
            ),
            (r#""region":"110000""#, r#""region":"119999""#, "region"),
            (
                r#""category":"免申即享""#,
                r#""category":"其他""#,
                "category",
            ),
            (
                r#""end":"2026-12-31""#,
                r#""end":"2025-12-31""#,
                "window.end",
            ),
            (
                r#""end":"2026-12-31""#,
                r#""end":"2026-13-31""#,
                "window.end",
            ),
            (r#""id":"P-1""#, r#""id":"P 1""#, "id"),
            (
                r#""kind":"scale_in""#,
                r#""kind":"size_in""#,
                "conditions[0].kind",
            ),
            (
                r#""kind":"scale_in""#,
                r#""kind":"tags_all""#,
                "conditions[0]",
            ),
            (
                r#""amount_yuan":100000"#,
                r#""amount_yuan":-1"#,
                "benefit.amount_yuan",
            ),
        ];
        for (from, to, field) in cases {
            assert!(POLICY.contains(from), "{from}");
            let e = Policy::from_json(&POLICY.replacen(from, to, 1)).unwrap_err();
            assert_eq!(e.field, field, "{from} -> {to}: {e}");
        }
        assert_eq!(Policy::from_json("{").unwrap_err().field, "(document)");
    }

    #[test]
    fn profiles_parse_and_refuse_bad_values() {
        let good = r#"{"uscc":"91110108551385082Q","name":"小米","region":"110108","industry":"6513",
            "scale":"大","founded":"2010-03-03","tags":["高新技术企业"],"credit_rating":"A","updated":"2026-11-01"}"#;
        let p = Profile::from_json(good).unwrap();
        assert_eq!(p.industry.unwrap().as_str(), "I6513");
        for (from, to, field) in [
            ("91110108551385082Q", "91110108551385082X", "uscc"),
            (r#""高新技术企业""#, r#""高新""#, "tags[0]"),
            (
                r#""credit_rating":"A""#,
                r#""credit_rating":"AAA""#,
                "credit_rating",
            ),
            (
                r#""founded":"2010-03-03""#,
                r#""founded":"2030-03-03""#,
                "founded",
            ),
            (r#""industry":"6513""#, r#""industry":"Z99""#, "industry"),
        ] {
            let e = Profile::from_json(&good.replace(from, to)).unwrap_err();
            assert_eq!(e.field, field, "{to}: {e}");
        }
    }

    #[test]
    fn whole_years_count_anniversaries() {
        let d = |y, m, day| {
            Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), day).unwrap()
        };
        assert_eq!(whole_years(d(2020, 3, 3), d(2026, 3, 2)), 5);
        assert_eq!(whole_years(d(2020, 3, 3), d(2026, 3, 3)), 6);
        assert_eq!(whole_years(d(2020, 2, 29), d(2021, 2, 28)), 0);
    }
}
