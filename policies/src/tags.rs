//! The tag vocabulary (企业标签): the qualifications, honours and listings policies name as
//! conditions, shipped as data (`data/tags.tsv`: tag, kind, authority, basis, aliases,
//! definition) and extended by a deployment's local vocabulary file of the same format.
//! Aliases and spelling variants (full-width brackets, quotation marks) map to one tag on
//! import; an unknown tag is refused naming the tags nearest to it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{OnceLock, RwLock};

use serde::{Deserialize, Serialize};

/// The shipped vocabulary.
const SHIPPED: &str = include_str!("../data/tags.tsv");

/// Most tags a local vocabulary may declare.
pub const MAX_LOCAL_TAGS: usize = 2000;

/// What a tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// 资质认定: a certification an authority grants.
    #[serde(rename = "资质认定")]
    Certification,
    /// 荣誉称号: an honour or list of merit.
    #[serde(rename = "荣誉称号")]
    Honour,
    /// 经营状况: a fact of the enterprise's business.
    #[serde(rename = "经营状况")]
    Business,
    /// 失信惩戒: a negative listing that policies exclude.
    #[serde(rename = "失信惩戒")]
    Negative,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "资质认定" => Kind::Certification,
            "荣誉称号" => Kind::Honour,
            "经营状况" => Kind::Business,
            "失信惩戒" => Kind::Negative,
            _ => return None,
        })
    }

    /// The Chinese name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Certification => "资质认定",
            Kind::Honour => "荣誉称号",
            Kind::Business => "经营状况",
            Kind::Negative => "失信惩戒",
        }
    }
}

/// One entry of the vocabulary.
#[derive(Debug, Clone, Serialize)]
pub struct TagInfo {
    /// The tag as stored and shown.
    pub tag: &'static str,
    /// What it is.
    pub kind: Kind,
    /// Who decides that an enterprise carries it.
    pub authority: &'static str,
    /// The rule that defines it.
    pub basis: &'static str,
    /// Other spellings mapped to it.
    pub aliases: Vec<&'static str>,
    /// What it means.
    pub definition: &'static str,
    /// True for a tag of the deployment's local vocabulary.
    pub local: bool,
    /// Its place in the vocabulary (the shipped tags first): a tag's bit in compact tag sets.
    #[serde(skip)]
    index: usize,
}

#[derive(Default)]
struct Vocabulary {
    entries: Vec<&'static TagInfo>,
    /// Folded spelling (tag or alias) → entry.
    by_spelling: HashMap<String, &'static TagInfo>,
}

impl Vocabulary {
    /// Adds the entries of `text` (the format of `data/tags.tsv`); nothing is added when a
    /// line is bad or a spelling is taken.
    fn add(&mut self, text: &'static str, local: bool) -> Result<usize, String> {
        let mut fresh: Vec<TagInfo> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let at = |reason: String| format!("line {}: {reason}", n + 1);
            let cols: Vec<&'static str> = line.split('\t').map(str::trim).collect();
            let [tag, kind, authority, basis, aliases, definition] = cols[..] else {
                return Err(at(format!(
                    "{} tab-separated columns; give tag, kind, authority, basis, aliases, definition",
                    cols.len()
                )));
            };
            let kind = Kind::parse(kind).ok_or_else(|| {
                at(format!(
                    "kind `{kind}` is none of 资质认定, 荣誉称号, 经营状况, 失信惩戒"
                ))
            })?;
            for spelling in std::iter::once(tag).chain(aliases.split('|')) {
                let chars = spelling.chars().count();
                if spelling.is_empty() && spelling != tag {
                    continue;
                }
                if !(1..=30).contains(&chars) || spelling.chars().any(char::is_control) {
                    return Err(at(format!(
                        "`{spelling}`: a tag or alias is 1 to 30 characters, without control characters"
                    )));
                }
            }
            if authority.is_empty() || definition.is_empty() {
                return Err(at("authority and definition must be given".into()));
            }
            fresh.push(TagInfo {
                tag,
                kind,
                authority,
                basis,
                aliases: aliases.split('|').filter(|a| !a.is_empty()).collect(),
                definition,
                local,
                index: 0,
            });
        }
        let local_now = self.entries.iter().filter(|e| e.local).count();
        if local && local_now + fresh.len() > MAX_LOCAL_TAGS {
            return Err(format!("more than {MAX_LOCAL_TAGS} local tags"));
        }
        let mut taken: HashMap<String, &str> = self
            .by_spelling
            .iter()
            .map(|(k, v)| (k.clone(), v.tag))
            .collect();
        for info in &fresh {
            for spelling in std::iter::once(info.tag).chain(info.aliases.iter().copied()) {
                if let Some(other) = taken.insert(fold(spelling), info.tag) {
                    return Err(format!(
                        "`{spelling}` of tag {} is already a spelling of {other}",
                        info.tag
                    ));
                }
            }
        }
        let added = fresh.len();
        for mut info in fresh {
            info.index = self.entries.len();
            let info: &'static TagInfo = Box::leak(Box::new(info));
            for spelling in std::iter::once(info.tag).chain(info.aliases.iter().copied()) {
                self.by_spelling.insert(fold(spelling), info);
            }
            self.entries.push(info);
        }
        Ok(added)
    }
}

fn vocabulary() -> &'static RwLock<Vocabulary> {
    static VOCABULARY: OnceLock<RwLock<Vocabulary>> = OnceLock::new();
    VOCABULARY.get_or_init(|| {
        let mut v = Vocabulary::default();
        // The shipped file parses (a test holds it to that); were it broken, no tag would be
        // known and every tagged line would be refused, never silently mistagged.
        let _ = v.add(SHIPPED, false);
        RwLock::new(v)
    })
}

/// A spelling folded for comparison: full-width ASCII to ASCII, quotation marks and spaces
/// dropped, Latin letters lower-cased.
pub fn fold(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0),
            '\u{3000}' => Some(' '),
            c => Some(c),
        })
        .filter(|c| {
            !matches!(c, '“' | '”' | '「' | '」' | '"' | '\'' | '‘' | '’') && !c.is_whitespace()
        })
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Declares a local vocabulary (the format of `data/tags.tsv`) on top of the shipped one, for
/// this process. Declaring the same text again adds nothing; a spelling that is already a
/// tag's or a bad line refuses the whole file.
pub fn declare_local(text: &str) -> Result<usize, String> {
    let mut v = vocabulary().write().unwrap_or_else(|e| e.into_inner());
    // The same file read again (a second knowledge base in one process) is no change.
    let known = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split('\t').next())
        .all(|tag| {
            v.by_spelling
                .get(&fold(tag.trim()))
                .is_some_and(|i| i.local)
        });
    if known {
        return Ok(0);
    }
    let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
    v.add(text, true)
}

/// Every tag, the shipped ones first in file order, then the local ones.
pub fn all() -> Vec<&'static TagInfo> {
    vocabulary()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .entries
        .clone()
}

/// The tags whose spelling, alias, definition or authority contains `query`.
pub fn find(query: &str) -> Vec<&'static TagInfo> {
    let q = fold(query);
    all()
        .into_iter()
        .filter(|i| {
            std::iter::once(i.tag)
                .chain(i.aliases.iter().copied())
                .any(|s| fold(s).contains(&q))
                || i.definition.contains(query.trim())
                || i.authority.contains(query.trim())
        })
        .collect()
}

/// The tags nearest to an unknown spelling: those sharing the most two-character pieces.
pub fn near(spelling: &str) -> Vec<&'static str> {
    let pieces = |s: &str| -> Vec<(char, char)> {
        let c: Vec<char> = fold(s).chars().collect();
        c.windows(2).map(|w| (w[0], w[1])).collect()
    };
    let wanted = pieces(spelling);
    let wanted_chars: Vec<char> = fold(spelling).chars().collect();
    let mut scored: Vec<(usize, &'static str)> = all()
        .into_iter()
        .filter_map(|i| {
            let score = std::iter::once(i.tag)
                .chain(i.aliases.iter().copied())
                .map(|s| {
                    let have = pieces(s);
                    let shared = wanted.iter().filter(|p| have.contains(p)).count();
                    // One shared character counts for short spellings (瞪羚 / 羚羊).
                    let chars = fold(s).chars().filter(|c| wanted_chars.contains(c)).count();
                    shared * 4 + chars
                })
                .max()
                .unwrap_or(0);
            (score >= 2).then_some((score, i.tag))
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(5).map(|(_, t)| t).collect()
}

/// An enterprise tag of the vocabulary, always in its stored spelling; equal, ordered and
/// hashed by that spelling.
#[derive(Clone, Copy)]
pub struct Tag(&'static TagInfo);

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tag").field(&self.0.tag).finish()
    }
}

impl PartialEq for Tag {
    fn eq(&self, other: &Tag) -> bool {
        self.0.tag == other.0.tag
    }
}

impl Eq for Tag {}

impl PartialOrd for Tag {
    fn partial_cmp(&self, other: &Tag) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Tag {
    fn cmp(&self, other: &Tag) -> std::cmp::Ordering {
        self.0.tag.cmp(other.0.tag)
    }
}

impl std::hash::Hash for Tag {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.tag.hash(h);
    }
}

impl Tag {
    /// The tag a spelling or alias names (`首台套` → `首台（套）`); an unknown one is refused
    /// with the nearest tags.
    pub fn parse(s: &str) -> Result<Tag, String> {
        let folded = fold(s);
        if let Some(info) = vocabulary()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_spelling
            .get(&folded)
        {
            return Ok(Tag(info));
        }
        let shown: String = s.chars().take(40).collect();
        let near = near(s);
        Err(if near.is_empty() {
            format!(
                "`{shown}` is not a known tag (`certgate tags` lists them; a local vocabulary, policies.local_tags, can declare more)"
            )
        } else {
            format!(
                "`{shown}` is not a known tag; nearest: {} (`certgate tags` lists them; a local vocabulary, policies.local_tags, can declare more)",
                near.join(", ")
            )
        })
    }

    /// The tag.
    pub fn as_str(self) -> &'static str {
        self.0.tag
    }

    /// Its place in the vocabulary: the shipped tags are the first, local ones follow.
    pub fn index(self) -> usize {
        self.0.index
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.tag)
    }
}

impl Serialize for Tag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.tag)
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Tag::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_vocabulary_has_the_labels_policies_use() {
        let all = all();
        assert!(all.len() >= 30, "{}", all.len());
        for label in [
            "规上企业",
            "首台（套）",
            "绿色工厂",
            "中华老字号",
            "个转企",
            "农业产业化龙头企业",
            "瞪羚企业",
            "雏鹰企业",
            "独角兽",
            "隐形冠军",
            "技术先进型服务企业",
            "科技型中小企业",
            "专精特新",
            "“小巨人”",
            "失信被执行人",
        ] {
            assert!(Tag::parse(label).is_ok(), "{label}");
        }
        for info in &all {
            assert!(
                !info.authority.is_empty() && !info.definition.is_empty(),
                "{}",
                info.tag
            );
        }
    }

    #[test]
    fn the_shipped_file_parses_in_full() {
        let mut v = Vocabulary::default();
        assert_eq!(v.add(SHIPPED, false), Ok(34));
    }

    #[test]
    fn aliases_and_spelling_variants_are_one_tag() {
        let t = Tag::parse("首台（套）").unwrap();
        for s in [
            "首台套",
            "首台(套)",
            " 首台（套） ",
            "首台（套）重大技术装备",
        ] {
            assert_eq!(Tag::parse(s).unwrap(), t, "{s}");
        }
        assert_eq!(Tag::parse("专精特新“小巨人”").unwrap().as_str(), "小巨人");
        assert_eq!(Tag::parse("高企").unwrap().as_str(), "高新技术企业");
    }

    #[test]
    fn an_unknown_tag_is_refused_with_the_nearest() {
        let e = Tag::parse("专精特新企业认定").unwrap_err();
        assert!(e.contains("nearest: 专精特新"), "{e}");
        let e = Tag::parse("绿色工厂示范").unwrap_err();
        assert!(e.contains("绿色工厂"), "{e}");
        let e = Tag::parse("xyz").unwrap_err();
        assert!(!e.contains("nearest"), "{e}");
        assert!(e.contains("certgate tags"), "{e}");
        assert!(Tag::parse("专精").is_err());
    }

    #[test]
    fn a_local_vocabulary_adds_tags_and_refuses_clashes() {
        let local = "# local\n光谷瞪羚\t荣誉称号\t武汉东湖新技术开发区管委会\t各地自行认定\t光谷瞪羚企业\t东湖高新区评定的高成长企业。\n";
        assert!(Tag::parse("光谷瞪羚企业").is_err());
        assert_eq!(declare_local(local).unwrap(), 1);
        assert_eq!(declare_local(local).unwrap(), 0);
        assert_eq!(Tag::parse("光谷瞪羚企业").unwrap().as_str(), "光谷瞪羚");
        assert!(all().iter().any(|i| i.tag == "光谷瞪羚" && i.local));
        let clash = "新标签\t荣誉称号\t某部门\t依据\t高企\t定义。\n";
        let e = declare_local(clash).unwrap_err();
        assert!(e.contains("already a spelling of 高新技术企业"), "{e}");
        assert!(
            Tag::parse("新标签").is_err(),
            "nothing of a refused file is added"
        );
        let e = declare_local("only\ttwo\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        let e = declare_local("某标签\t好的\t部门\t依据\t\t定义\n").unwrap_err();
        assert!(e.contains("kind"), "{e}");
    }
}
