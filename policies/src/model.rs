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

fn check_bounds<T: PartialOrd + Copy>(
    field: &str,
    min: Option<T>,
    max: Option<T>,
) -> Result<(), InvalidField> {
    match (min, max) {
        (None, None) => Err(invalid(field, "give min, max or both")),
        (Some(a), Some(b)) if a > b => Err(invalid(field, "min is greater than max")),
        _ => Ok(()),
    }
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

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if !is_id(&self.id) {
            return Err(invalid("id", "1-40 of A-Z a-z 0-9 -"));
        }
        if self.version == 0 {
            return Err(invalid("version", "starts at 1"));
        }
        let chars = |s: &str| s.trim().chars().count();
        if !(1..=200).contains(&chars(&self.title)) {
            return Err(invalid("title", "1 to 200 characters"));
        }
        if !(1..=100).contains(&chars(&self.issuer)) {
            return Err(invalid("issuer", "1 to 100 characters"));
        }
        if chars(&self.text) > 50_000 {
            return Err(invalid("text", "at most 50000 characters"));
        }
        if self.window.start > self.window.end {
            return Err(invalid("window.end", "before window.start"));
        }
        if let Benefit::Formula { rate, .. } = self.benefit
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(invalid("benefit.rate", "a positive number"));
        }
        if self.conditions.len() > 32 {
            return Err(invalid("conditions", "at most 32"));
        }
        for (i, c) in self.conditions.iter().enumerate() {
            let f = |name: &str| format!("conditions[{i}].{name}");
            match c {
                Condition::RegionWithin { regions } => {
                    if regions.is_empty() {
                        return Err(invalid(f("regions"), "name at least one"));
                    }
                    for (j, r) in regions.iter().enumerate() {
                        if !r.within(self.region) {
                            return Err(invalid(
                                format!("conditions[{i}].regions[{j}]"),
                                format!("{r} is not inside the policy's region {}", self.region),
                            ));
                        }
                    }
                }
                Condition::IndustryWithin { codes } if codes.is_empty() => {
                    return Err(invalid(f("codes"), "name at least one"));
                }
                Condition::ScaleIn { scales } if scales.is_empty() => {
                    return Err(invalid(f("scales"), "name at least one"));
                }
                Condition::TagsAll { tags } | Condition::TagsNone { tags } if tags.is_empty() => {
                    return Err(invalid(f("tags"), "name at least one"));
                }
                Condition::AgeYears { min, max } => check_bounds(&f("min"), *min, *max)?,
                Condition::Employees { min, max } => check_bounds(&f("min"), *min, *max)?,
                Condition::RegisteredCapital { min_yuan, max_yuan }
                | Condition::AnnualRevenue { min_yuan, max_yuan } => {
                    check_bounds(&f("min_yuan"), *min_yuan, *max_yuan)?
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// An enterprise profile (企业画像), as the data department keeps it.
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

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let n = self.name.trim().chars().count();
        if !(1..=200).contains(&n) {
            return Err(invalid("name", "1 to 200 characters"));
        }
        if self.business_scope.chars().count() > 2000 {
            return Err(invalid("business_scope", "at most 2000 characters"));
        }
        if self.region == Region::NATION {
            return Err(invalid(
                "region",
                "an enterprise is registered in a province, city or district",
            ));
        }
        if self.founded.is_some_and(|f| f > self.updated) {
            return Err(invalid("founded", "after the profile's update date"));
        }
        Ok(())
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
