//! Code tables: administrative divisions (GB/T 2260), industries (GB/T 4754-2017), enterprise
//! scales, tags and tax credit ratings. Parse, don't validate: the newtypes here hold only
//! codes that passed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The regions certgate knows: every province-level division, and the cities and districts
/// of the sample data. `000000` is the whole country.
pub const REGIONS: &[(&str, &str)] = &[
    ("000000", "全国"),
    ("110000", "北京市"),
    ("120000", "天津市"),
    ("130000", "河北省"),
    ("140000", "山西省"),
    ("150000", "内蒙古自治区"),
    ("210000", "辽宁省"),
    ("220000", "吉林省"),
    ("230000", "黑龙江省"),
    ("310000", "上海市"),
    ("320000", "江苏省"),
    ("330000", "浙江省"),
    ("340000", "安徽省"),
    ("350000", "福建省"),
    ("360000", "江西省"),
    ("370000", "山东省"),
    ("410000", "河南省"),
    ("420000", "湖北省"),
    ("430000", "湖南省"),
    ("440000", "广东省"),
    ("450000", "广西壮族自治区"),
    ("460000", "海南省"),
    ("500000", "重庆市"),
    ("510000", "四川省"),
    ("520000", "贵州省"),
    ("530000", "云南省"),
    ("540000", "西藏自治区"),
    ("610000", "陕西省"),
    ("620000", "甘肃省"),
    ("630000", "青海省"),
    ("640000", "宁夏回族自治区"),
    ("650000", "新疆维吾尔自治区"),
    ("710000", "台湾省"),
    ("810000", "香港特别行政区"),
    ("820000", "澳门特别行政区"),
    ("110100", "北京市市辖区"),
    ("120100", "天津市市辖区"),
    ("130100", "石家庄市"),
    ("310100", "上海市市辖区"),
    ("320100", "南京市"),
    ("320200", "无锡市"),
    ("320500", "苏州市"),
    ("330100", "杭州市"),
    ("330200", "宁波市"),
    ("340100", "合肥市"),
    ("350200", "厦门市"),
    ("370100", "济南市"),
    ("370200", "青岛市"),
    ("410100", "郑州市"),
    ("420100", "武汉市"),
    ("430100", "长沙市"),
    ("440100", "广州市"),
    ("440300", "深圳市"),
    ("500100", "重庆市市辖区"),
    ("510100", "成都市"),
    ("610100", "西安市"),
    ("110101", "东城区"),
    ("110102", "西城区"),
    ("110105", "朝阳区"),
    ("110106", "丰台区"),
    ("110108", "海淀区"),
    ("110114", "昌平区"),
    ("110115", "大兴区"),
    ("120101", "和平区"),
    ("120116", "滨海新区"),
    ("130102", "长安区"),
    ("310101", "黄浦区"),
    ("310104", "徐汇区"),
    ("310112", "闵行区"),
    ("310115", "浦东新区"),
    ("320102", "玄武区"),
    ("320214", "新吴区"),
    ("320505", "虎丘区"),
    ("320506", "吴中区"),
    ("330106", "西湖区"),
    ("330108", "滨江区"),
    ("330110", "余杭区"),
    ("330212", "鄞州区"),
    ("340104", "蜀山区"),
    ("350203", "思明区"),
    ("370102", "历下区"),
    ("370212", "崂山区"),
    ("410105", "金水区"),
    ("420106", "武昌区"),
    ("420111", "洪山区"),
    ("430104", "岳麓区"),
    ("440106", "天河区"),
    ("440112", "黄埔区"),
    ("440304", "福田区"),
    ("440305", "南山区"),
    ("440306", "宝安区"),
    ("500103", "渝中区"),
    ("500112", "渝北区"),
    ("510104", "锦江区"),
    ("510107", "武侯区"),
    ("610113", "雁塔区"),
];

/// A GB/T 2260 administrative division code known to certgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(u32);

impl Region {
    /// The whole country.
    pub const NATION: Region = Region(0);

    /// Parses a known 6-digit code.
    pub fn parse(s: &str) -> Result<Region, String> {
        if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{s}` is not a 6-digit GB/T 2260 code"));
        }
        if !REGIONS.iter().any(|(c, _)| *c == s) {
            return Err(format!("`{s}` is not a known administrative division"));
        }
        s.parse()
            .map(Region)
            .map_err(|_| format!("`{s}` is not a number"))
    }

    /// The 6-digit code.
    pub fn code(self) -> String {
        format!("{:06}", self.0)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        let code = self.code();
        REGIONS
            .iter()
            .find(|(c, _)| *c == code)
            .map_or("", |(_, n)| n)
    }

    /// The region itself and every division above it, up to the whole country, as codes:
    /// `110108` → `110108`, `110100`, `110000`, `000000`.
    pub fn ancestors(self) -> Vec<Region> {
        let mut out = vec![self];
        let city = Region(self.0 / 100 * 100);
        let province = Region(self.0 / 10_000 * 10_000);
        for r in [city, province, Region::NATION] {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }

    /// True when `self` is `other` or lies inside it.
    pub fn within(self, other: Region) -> bool {
        other == self
            || other == Region::NATION
            || other.0 == self.0 / 100 * 100
            || other.0 == self.0 / 10_000 * 10_000
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

impl Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.code())
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Region::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// GB/T 4754-2017 sections and the divisions (two-digit codes) each holds.
const SECTIONS: &[(char, u8, u8)] = &[
    ('A', 1, 5),
    ('B', 6, 12),
    ('C', 13, 43),
    ('D', 44, 46),
    ('E', 47, 50),
    ('F', 51, 52),
    ('G', 53, 60),
    ('H', 61, 62),
    ('I', 63, 65),
    ('J', 66, 69),
    ('K', 70, 70),
    ('L', 71, 72),
    ('M', 73, 75),
    ('N', 76, 79),
    ('O', 80, 82),
    ('P', 83, 83),
    ('Q', 84, 85),
    ('R', 86, 90),
    ('S', 91, 96),
    ('T', 97, 97),
];

/// A GB/T 4754-2017 industry code: a section letter, optionally followed by a 2-, 3- or
/// 4-digit division, group or class, always written with its section letter (`C`, `C39`,
/// `C391`, `C3911`). A shorter code is a prefix that covers its children.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Industry(String);

impl Industry {
    /// Parses `C3911`, `3911`, `C39`, `39`, `C` … (the section letter is derived when left
    /// out, and must match the division when given).
    pub fn parse(s: &str) -> Result<Industry, String> {
        let s = s.trim();
        let (letter, digits) = match s.chars().next() {
            Some(c) if c.is_ascii_alphabetic() => (Some(c.to_ascii_uppercase()), &s[1..]),
            _ => (None, s),
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) || ![0, 2, 3, 4].contains(&digits.len()) {
            return Err(format!(
                "`{s}` is not a GB/T 4754-2017 code (a section letter and/or 2-4 digits)"
            ));
        }
        if digits.is_empty() {
            return match letter {
                Some(l) if SECTIONS.iter().any(|(c, _, _)| *c == l) => Ok(Industry(l.to_string())),
                _ => Err(format!("`{s}` is not a GB/T 4754-2017 section")),
            };
        }
        let division: u8 = digits[..2]
            .parse()
            .map_err(|_| format!("`{s}`: bad division"))?;
        let Some((section, _, _)) = SECTIONS
            .iter()
            .find(|(_, lo, hi)| (*lo..=*hi).contains(&division))
        else {
            return Err(format!("`{s}`: division {division:02} does not exist"));
        };
        if letter.is_some_and(|l| l != *section) {
            return Err(format!(
                "`{s}`: division {division:02} belongs to section {section}"
            ));
        }
        Ok(Industry(format!("{section}{digits}")))
    }

    /// The code, e.g. `C3911`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The code and every shorter code that covers it: `C3911` → `C`, `C39`, `C391`, `C3911`.
    pub fn prefixes(&self) -> Vec<String> {
        (1..=self.0.len())
            .filter(|n| *n == 1 || *n >= 3)
            .map(|n| self.0[..n].to_owned())
            .collect()
    }

    /// True when `self` is `other` or one of its children.
    pub fn within(&self, other: &Industry) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl fmt::Display for Industry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Industry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Industry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Industry::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Enterprise scale (企业规模, 大中小微).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scale {
    /// 大型
    #[serde(rename = "大")]
    Large,
    /// 中型
    #[serde(rename = "中")]
    Medium,
    /// 小型
    #[serde(rename = "小")]
    Small,
    /// 微型
    #[serde(rename = "微")]
    Micro,
}

impl Scale {
    /// The one-character name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scale::Large => "大",
            Scale::Medium => "中",
            Scale::Small => "小",
            Scale::Micro => "微",
        }
    }
}

/// The tags an enterprise can carry.
pub const TAGS: &[&str] = &[
    "高新技术企业",
    "专精特新",
    "小巨人",
    "科技型中小企业",
    "创新型中小企业",
    "瞪羚企业",
    "独角兽企业",
    "单项冠军",
    "农业产业化龙头企业",
    "外贸企业",
    "首次入规",
    "失信被执行人",
    "重大税收违法",
    "经营异常名录",
    "环保处罚",
];

/// An enterprise tag from [`TAGS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(&'static str);

impl Tag {
    /// Parses a tag of [`TAGS`].
    pub fn parse(s: &str) -> Result<Tag, String> {
        TAGS.iter()
            .find(|t| **t == s)
            .map(|t| Tag(t))
            .ok_or_else(|| format!("`{s}` is not a known tag"))
    }

    /// The tag.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl Serialize for Tag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tag::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Tax credit rating (纳税信用等级), best first: A > B > M > C > D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Credit {
    /// A
    A,
    /// B
    B,
    /// M (new or small taxpayers without a full record)
    M,
    /// C
    C,
    /// D
    D,
}

impl Credit {
    /// Rank, higher is better.
    pub fn rank(self) -> u8 {
        match self {
            Credit::A => 5,
            Credit::B => 4,
            Credit::M => 3,
            Credit::C => 2,
            Credit::D => 1,
        }
    }

    /// The letter.
    pub fn as_str(self) -> &'static str {
        match self {
            Credit::A => "A",
            Credit::B => "B",
            Credit::M => "M",
            Credit::C => "C",
            Credit::D => "D",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_have_ancestors() {
        let r = Region::parse("110108").unwrap();
        let a: Vec<String> = r.ancestors().iter().map(|r| r.code()).collect();
        assert_eq!(a, ["110108", "110100", "110000", "000000"]);
        assert!(r.within(Region::parse("110000").unwrap()));
        assert!(!r.within(Region::parse("310000").unwrap()));
        assert!(r.within(Region::NATION));
        let p = Region::parse("440000").unwrap();
        assert_eq!(p.ancestors().len(), 2);
        assert_eq!(Region::NATION.ancestors(), [Region::NATION]);
        for bad in ["11010", "1101088", "11010x", "999999", ""] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Region::parse("110108").unwrap().name(), "海淀区");
    }

    #[test]
    fn industries_normalise_and_cover_children() {
        assert_eq!(Industry::parse("3911").unwrap().as_str(), "C3911");
        assert_eq!(Industry::parse("i6513").unwrap().as_str(), "I6513");
        assert_eq!(Industry::parse("C").unwrap().as_str(), "C");
        assert_eq!(Industry::parse("65").unwrap().as_str(), "I65");
        assert_eq!(
            Industry::parse("C3911").unwrap().prefixes(),
            ["C", "C39", "C391", "C3911"]
        );
        assert!(
            Industry::parse("C3911")
                .unwrap()
                .within(&Industry::parse("C39").unwrap())
        );
        assert!(
            !Industry::parse("C3911")
                .unwrap()
                .within(&Industry::parse("C38").unwrap())
        );
        for bad in ["I3911", "99", "00", "Z", "C1", "C39111", "", "中"] {
            assert!(Industry::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_and_credit() {
        assert!(Tag::parse("专精特新").is_ok());
        assert!(Tag::parse("专精").is_err());
        assert!(Credit::A.rank() > Credit::M.rank() && Credit::M.rank() > Credit::C.rank());
    }
}
