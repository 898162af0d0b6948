//! A deterministic synthetic enterprise population (`certgate enterprises generate`): the same
//! count and seed always give the same profiles, with realistic proportions of regions,
//! industries, scales, ages, sizes and tags, and some data left missing on purpose.

use std::collections::BTreeSet;

use time::{Date, Duration};

use crate::codes::{Credit, Industry, Region, Scale, Tag};
use crate::model::Profile;

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An integer in [lo, hi].
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Log-uniform in [lo, hi].
    pub fn log_between(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo.max(1) as f64).ln(), (hi as f64).ln());
        (a + (b - a) * self.unit()).exp().round() as u64
    }

    /// One item of `items` with the given weights.
    pub fn weighted<'a, T>(&mut self, items: &'a [(T, u32)]) -> &'a T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut pick = (self.next_u64() % u64::from(total.max(1))) as u32;
        for (item, w) in items {
            if pick < *w {
                return item;
            }
            pick -= w;
        }
        &items[items.len() - 1].0
    }
}

/// Where enterprises are registered, weighted roughly by economic weight.
const REGIONS: &[(&str, u32)] = &[
    ("110101", 3),
    ("110102", 3),
    ("110105", 8),
    ("110106", 4),
    ("110108", 10),
    ("110114", 4),
    ("110115", 4),
    ("120101", 2),
    ("120116", 5),
    ("130102", 4),
    ("310101", 3),
    ("310104", 4),
    ("310112", 5),
    ("310115", 10),
    ("320102", 3),
    ("320214", 5),
    ("320505", 5),
    ("320506", 5),
    ("330106", 4),
    ("330108", 6),
    ("330110", 6),
    ("330212", 5),
    ("340104", 4),
    ("350203", 4),
    ("370102", 3),
    ("370212", 4),
    ("410105", 4),
    ("420106", 3),
    ("420111", 4),
    ("430104", 4),
    ("440106", 6),
    ("440112", 5),
    ("440304", 6),
    ("440305", 9),
    ("440306", 8),
    ("500103", 3),
    ("500112", 4),
    ("510104", 3),
    ("510107", 4),
    ("610113", 4),
];

/// Industry classes (GB/T 4754-2017) with weights and a sample business scope.
const INDUSTRIES: &[((&str, &str), u32)] = &[
    (("A0111", "稻谷种植；农产品销售"), 2),
    (("A0141", "蔬菜种植；农业技术推广"), 2),
    (("A0311", "牛的饲养；畜牧技术服务"), 1),
    (("C1331", "食用植物油加工"), 2),
    (("C1511", "酒精制造；白酒生产销售"), 1),
    (("C1819", "机织服装制造"), 3),
    (("C2710", "化学药品原料药制造；医药技术研发"), 2),
    (("C2761", "生物药品制造；生物技术开发"), 2),
    (("C3311", "金属结构制造"), 2),
    (("C3484", "机械零部件加工"), 3),
    (("C3612", "新能源车整车制造；汽车零部件研发"), 1),
    (("C3670", "汽车零部件及配件制造"), 3),
    (("C3825", "光伏设备及元器件制造"), 2),
    (("C3841", "锂离子电池制造"), 2),
    (("C3911", "计算机整机制造；电子产品销售"), 2),
    (("C3922", "通信终端设备制造"), 2),
    (("C3973", "集成电路制造；半导体器件研发"), 2),
    (("C4028", "电子测量仪器制造"), 1),
    (("D4411", "火力发电"), 1),
    (("E4710", "住宅房屋建筑"), 3),
    (("E5011", "建筑装饰工程"), 3),
    (("F5137", "家用电器批发"), 4),
    (("F5212", "超级市场零售"), 5),
    (("F5292", "互联网零售；日用百货销售"), 5),
    (("G5431", "道路货物运输"), 4),
    (("G5920", "仓储服务"), 2),
    (("H6110", "旅游饭店"), 2),
    (("H6210", "正餐服务；餐饮管理"), 6),
    (("I6311", "固定电信服务"), 1),
    (("I6422", "互联网游戏服务"), 2),
    (("I6432", "互联网生活服务平台"), 2),
    (("I6511", "基础软件开发；技术服务"), 3),
    (("I6513", "应用软件开发；信息技术咨询服务"), 6),
    (("I6550", "信息处理和存储支持服务"), 2),
    (("J6621", "货币银行服务"), 1),
    (("K7010", "房地产开发经营"), 2),
    (("L7212", "投资与资产管理"), 3),
    (("M7530", "科技中介服务"), 2),
    (("M7320", "工程和技术研究和试验发展"), 3),
    (("M7340", "医学研究和试验发展"), 1),
    (("M7519", "科技中介服务；技术推广"), 2),
    (("N7721", "水污染治理"), 1),
    (("O8010", "家庭服务"), 2),
    (("P8391", "职业技能培训"), 2),
    (("Q8411", "综合医院"), 1),
    (("R8730", "广播电视节目制作"), 1),
];

const SCALES: &[(Scale, u32)] = &[
    (Scale::Micro, 60),
    (Scale::Small, 28),
    (Scale::Medium, 9),
    (Scale::Large, 3),
];

const CREDITS: &[(Credit, u32)] = &[
    (Credit::A, 20),
    (Credit::B, 45),
    (Credit::M, 20),
    (Credit::C, 10),
    (Credit::D, 5),
];

const CHARSET: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// A valid USCC for enterprise number `n` registered in `region`: authority 9 (market
/// regulation), type 1 (enterprise), the region, a 9-character code from `n`, the check
/// character.
pub fn uscc_for(n: u64, region: Region) -> Option<cert_store::Uscc> {
    let mut s = format!("91{}", region.code());
    let mut x = n;
    let mut org = [b'0'; 9];
    for slot in org.iter_mut().rev() {
        *slot = CHARSET[(x % 31) as usize];
        x /= 31;
    }
    s.push_str(std::str::from_utf8(&org).unwrap_or("000000000"));
    let sum: u32 = s
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| CHARSET.iter().position(|c| *c == b).unwrap_or(0) as u32 * w)
        .sum();
    let check = (31 - sum % 31) % 31;
    s.push(char::from(CHARSET[check as usize]));
    // Built from the charset with its check character: `None` cannot happen.
    s.parse().ok()
}

const NAME_HEADS: &[&str] = &[
    "华", "中", "新", "创", "智", "恒", "瑞", "博", "鑫", "安", "明", "凯", "远", "盛", "嘉", "汇",
    "泰", "锦", "达", "宏", "诚", "天", "海", "星", "云", "峰", "源", "康", "睿", "和",
];
const NAME_TAILS: &[&str] = &[
    "科技",
    "信息技术",
    "智能装备",
    "新材料",
    "生物医药",
    "电子",
    "食品",
    "贸易",
    "物流",
    "建设工程",
    "餐饮管理",
    "农业发展",
    "软件",
    "数据服务",
    "精密机械",
    "新能源",
    "环境科技",
];

/// `count` profiles from `seed`, each updated on `updated`.
pub fn population(count: u64, seed: u64, updated: Date) -> impl Iterator<Item = Profile> {
    (0..count).filter_map(move |n| profile(n, seed, updated))
}

/// Profile number `n` of the population of `seed`.
pub fn profile(n: u64, seed: u64, updated: Date) -> Option<Profile> {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ n);
    let code: &&str = rng.weighted(REGIONS);
    let region = Region::parse(code).unwrap_or(Region::NATION);
    let (industry_code, scope) = *rng.weighted(INDUSTRIES);
    let industry = Industry::parse(industry_code).ok();
    let scale = *rng.weighted(SCALES);
    // Young enterprises are the most numerous.
    let age_days = (rng.unit().powf(2.2) * 30.0 * 365.0) as i64;
    let founded = updated - Duration::days(age_days);
    let (emp, rev, cap) = match scale {
        Scale::Micro => ((1, 9), (50_000, 3_000_000), (10_000, 5_000_000)),
        Scale::Small => ((10, 99), (3_000_000, 20_000_000), (500_000, 30_000_000)),
        Scale::Medium => (
            (100, 999),
            (20_000_000, 400_000_000),
            (5_000_000, 200_000_000),
        ),
        Scale::Large => (
            (1000, 30_000),
            (400_000_000, 20_000_000_000),
            (50_000_000, 5_000_000_000),
        ),
    };
    let mut tags = BTreeSet::new();
    let mut tag = |t: &str, p: f64, rng: &mut Rng| {
        if rng.chance(p)
            && let Ok(t) = Tag::parse(t)
        {
            tags.insert(t);
        }
    };
    let sme = scale != Scale::Large;
    let tech = industry_code.starts_with('C')
        || industry_code.starts_with('I')
        || industry_code.starts_with('M');
    tag("高新技术企业", if tech { 0.25 } else { 0.03 }, &mut rng);
    tag(
        "科技型中小企业",
        if tech && sme { 0.3 } else { 0.02 },
        &mut rng,
    );
    tag("创新型中小企业", if sme { 0.06 } else { 0.0 }, &mut rng);
    if matches!(scale, Scale::Small | Scale::Medium) && rng.chance(if tech { 0.12 } else { 0.03 }) {
        tag("专精特新", 1.0, &mut rng);
        tag("小巨人", 0.2, &mut rng);
    }
    tag("瞪羚企业", if tech { 0.02 } else { 0.0 }, &mut rng);
    tag(
        "独角兽企业",
        if tech && scale == Scale::Large {
            0.03
        } else {
            0.0
        },
        &mut rng,
    );
    tag(
        "单项冠军",
        if matches!(scale, Scale::Large | Scale::Medium) {
            0.02
        } else {
            0.0
        },
        &mut rng,
    );
    tag(
        "农业产业化龙头企业",
        if industry_code.starts_with('A') {
            0.2
        } else {
            0.0
        },
        &mut rng,
    );
    tag("外贸企业", 0.08, &mut rng);
    tag(
        "首次入规",
        if scale == Scale::Small { 0.08 } else { 0.0 },
        &mut rng,
    );
    tag("失信被执行人", 0.02, &mut rng);
    tag("重大税收违法", 0.005, &mut rng);
    tag("经营异常名录", 0.04, &mut rng);
    tag(
        "环保处罚",
        if industry_code.starts_with('C') {
            0.03
        } else {
            0.005
        },
        &mut rng,
    );
    let head = NAME_HEADS[rng.between(0, NAME_HEADS.len() as u64 - 1) as usize];
    let head2 = NAME_HEADS[rng.between(0, NAME_HEADS.len() as u64 - 1) as usize];
    let tail = NAME_TAILS[rng.between(0, NAME_TAILS.len() as u64 - 1) as usize];
    let city = region
        .ancestors()
        .get(1)
        .map_or("", |r| r.name())
        .trim_end_matches("市辖区");
    let city = city.trim_end_matches('市');
    Some(Profile {
        uscc: uscc_for(
            n.wrapping_add(seed.wrapping_mul(1_000_003)) % 26_439_622_160_671,
            region,
        )?,
        name: format!("{city}{head}{head2}{tail}有限公司"),
        region,
        industry: if rng.chance(0.03) { None } else { industry },
        scale: if rng.chance(0.02) { None } else { Some(scale) },
        founded: if rng.chance(0.02) {
            None
        } else {
            Some(founded)
        },
        registered_capital_yuan: if rng.chance(0.02) {
            None
        } else {
            Some(rng.log_between(cap.0, cap.1))
        },
        employees: if rng.chance(0.03) {
            None
        } else {
            Some(rng.between(emp.0, emp.1))
        },
        annual_revenue_yuan: if rng.chance(0.05) {
            None
        } else {
            Some(rng.log_between(rev.0, rev.1))
        },
        tags,
        credit_rating: if rng.chance(0.04) {
            None
        } else {
            Some(*rng.weighted(CREDITS))
        },
        business_scope: scope.to_owned(),
        updated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_population_is_deterministic_valid_and_unique() {
        let day = Date::from_calendar_date(2026, time::Month::November, 1).unwrap();
        let a: Vec<Profile> = population(5000, 7, day).collect();
        let b: Vec<Profile> = population(5000, 7, day).collect();
        assert_eq!(a, b);
        let c: Vec<Profile> = population(10, 8, day).collect();
        assert_ne!(a[..10], c[..]);
        let ids: BTreeSet<_> = a.iter().map(|p| p.uscc.clone()).collect();
        assert_eq!(ids.len(), a.len(), "unique USCCs");
        for p in &a {
            p.validate().unwrap();
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(&Profile::from_json(&json).unwrap(), p);
        }
        let share = |f: &dyn Fn(&Profile) -> bool| {
            a.iter().filter(|p| f(p)).count() as f64 / a.len() as f64
        };
        assert!((0.5..0.7).contains(&share(&|p| p.scale == Some(Scale::Micro))));
        let zjtx = Tag::parse("专精特新").unwrap();
        assert!((0.005..0.05).contains(&share(&|p| p.tags.contains(&zjtx))));
        assert!(share(&|p| p.credit_rating.is_none()) > 0.0);
    }
}
