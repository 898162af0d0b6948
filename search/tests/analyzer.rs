//! Segmentation by `ChineseAnalyzer`: domain terms, user dictionaries, other scripts, hostile
//! input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::LazyLock;

use search::{ChineseAnalyzer, SearchError};

static ANALYZER: LazyLock<ChineseAnalyzer> = LazyLock::new(|| ChineseAnalyzer::new().unwrap());

/// The terms the design requires to be kept whole.
const REQUIRED: [&str; 28] = [
    "专精特新",
    "小巨人",
    "专精特新小巨人",
    "高新技术企业",
    "研发费用加计扣除",
    "加计扣除",
    "稳岗补贴",
    "科技型中小企业",
    "创新型中小企业",
    "瞪羚企业",
    "独角兽企业",
    "单项冠军",
    "首台套",
    "贷款贴息",
    "创业担保贷款",
    "数字化转型",
    "免申即享",
    "惠企政策",
    "失信被执行人",
    "首次入规",
    "农业产业化龙头企业",
    "知识产权质押",
    "社保补贴",
    "以工代训",
    "留工培训",
    "技术改造",
    "规上企业",
    "营商环境",
];

/// Every word of the shipped dictionary.
fn dictionary_words() -> Vec<&'static str> {
    include_str!("../dict/domain.txt")
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

/// Policy terms: the shipped words with the terms' frequency.
fn policy_terms() -> Vec<&'static str> {
    include_str!("../dict/domain.txt")
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some("100000"))
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

fn tokens(text: &str) -> Vec<String> {
    ANALYZER.tokens(text)
}

#[test]
fn zhuanjingtexin_is_one_token() {
    let got = tokens("鼓励企业申报专精特新中小企业，培育一批专精特新小巨人。");
    assert!(got.contains(&"专精特新".to_owned()), "{got:?}");
    assert!(!got.contains(&"专精".to_owned()), "{got:?}");
    assert!(!got.contains(&"特新".to_owned()), "{got:?}");
    assert_eq!(tokens("专精特新"), ["专精特新"]);
}

#[test]
fn required_terms_are_single_tokens() {
    let policy = policy_terms();
    for term in REQUIRED {
        assert!(policy.contains(&term), "{term} is not in dict/domain.txt");
    }
}

#[test]
fn every_policy_term_stays_whole_in_context() {
    let vocabulary = dictionary_words();
    for term in policy_terms() {
        // Alone: the term itself, then only shipped words inside it.
        let alone = tokens(term);
        assert_eq!(alone[0], term, "{term}: {alone:?}");
        for part in &alone[1..] {
            assert!(
                term.contains(part.as_str()) && vocabulary.contains(&part.as_str()),
                "{term}: {alone:?}"
            );
        }
        for text in [
            format!("申报{term}"),
            format!("关于做好{term}工作的通知"),
            format!("对{term}给予奖励"),
            format!("{term}政策解读"),
            format!("支持企业申报{term}，最高奖励50万元。"),
        ] {
            let got = tokens(&text);
            assert!(got.contains(&term.to_owned()), "{text}: {got:?}");
            assert!(
                !got.iter().any(|t| t == "专精" || t == "特新"),
                "{text}: {got:?}"
            );
        }
    }
}

#[test]
fn compounds_carry_the_terms_inside_them() {
    assert_eq!(
        tokens("专精特新小巨人"),
        ["专精特新小巨人", "专精特新", "小巨人"]
    );
    assert_eq!(
        tokens("研发费用加计扣除"),
        ["研发费用加计扣除", "研发费用", "加计扣除", "扣除"]
    );
    let got = tokens("发放稳岗补贴");
    assert_eq!(got, ["发放", "稳岗补贴", "稳岗", "补贴"]);
}

#[test]
fn general_words_carry_their_sub_words_and_domain_terms_stay_whole() {
    // Words of jieba's general dictionary are followed by the words inside them …
    assert_eq!(tokens("住宿和餐饮业"), ["住宿", "和", "餐饮业", "餐饮"]);
    assert_eq!(
        tokens("中小微外贸企业"),
        ["中小", "微", "外贸企业", "外贸", "企业"]
    );
    assert_eq!(
        tokens("中华人民共和国"),
        ["中华人民共和国", "中华", "华人", "人民", "共和", "共和国"]
    );
    // … but a domain term is never broken up: 专精特新 is not 专精 + 特新, 高新技术企业 is not
    // 高新 + 技术 (only the domain terms inside it follow it).
    assert_eq!(tokens("专精特新"), ["专精特新"]);
    assert_eq!(tokens("高新技术企业"), ["高新技术企业", "企业"]);
    assert_eq!(tokens("走专精发展道路"), ["走", "专精", "发展", "道路"]);
    assert_eq!(tokens("培育特新产品"), ["培育", "特", "新", "产品"]);
}

#[test]
fn other_scripts_and_numbers() {
    assert_eq!(
        tokens("Hello, WORLD! 增长3.5%，ＡＢＣ１２３ v1.2 COVID-19 Café Москва 2024年"),
        [
            "hello",
            "world",
            "增长",
            "3.5",
            "abc123",
            "v1.2",
            "covid",
            "19",
            "café",
            "москва",
            "2024",
            "年"
        ]
    );
    assert_eq!(tokens("a.b 1. .5 1.2.3"), ["a", "b", "1", "5", "1.2.3"]);
}

#[test]
fn punctuation_and_whitespace_give_nothing() {
    for text in [
        "",
        "   ",
        "，。！？、；：“”‘’（）【】《》",
        "\t\r\n\u{3000}",
        "...---!!!",
        "😀🎉",
    ] {
        assert!(tokens(text).is_empty(), "{text:?}: {:?}", tokens(text));
    }
}

#[test]
fn hostile_input_does_not_panic() {
    let mut samples: Vec<String> = vec![
        "专精特新".repeat(262_144),                            // 1 MiB of one term
        "a".repeat(1 << 20),                                   // one 1 MiB word
        "的".repeat(350_000),                                  // ~1 MiB of one character
        "😀".repeat(262_144),                                  // 1 MiB of emoji
        (0u32..0x110000).filter_map(char::from_u32).collect(), // every scalar value
        "\0\u{1}\u{7f}\u{80}\u{9f}\u{200b}\u{200d}\u{202e}\u{feff}\u{fffd}\u{ffff}".to_owned(),
        "e\u{301}\u{301}\u{301} ̶s̶t̶r̶u̶c̶k̶ Z̸͔̈a̵̦̅l̷͓̀g̶̹̈́o̷̺͝".to_owned(),
        "مرحبا שלום नमस्ते ສະບາຍດີ 안녕하세요 こんにちは 𠀀𠀁𪚥 ⅫⅩ ²³".to_owned(),
        "</em><script>alert(1)</script>&amp;".to_owned(),
    ];
    let mut mixed = String::new();
    while mixed.len() < 1 << 20 {
        mixed.push_str("高新技术企业ABC😀\u{0}。 3.1.4 Ωμέγα \u{202e}𠀀 ");
    }
    samples.push(mixed);
    for text in &samples {
        let got = tokens(text);
        assert!(got.iter().all(|t| !t.is_empty() && t.len() <= 255));
    }
    assert!(
        tokens(&samples[1]).is_empty(),
        "an over-long word is dropped"
    );
    assert_eq!(tokens(&samples[0]).len(), 262_144);
}

#[test]
fn user_dictionary_adds_a_term() {
    assert!(!tokens("推行链长制").contains(&"链长制".to_owned()));
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "# local terms\n\n链长制\n揭榜挂帅制 5000 nz").unwrap();
    let analyzer = ChineseAnalyzer::with_user_dictionary(file.path()).unwrap();
    assert_eq!(analyzer.tokens("推行链长制"), ["推行", "链长制"]);
    assert!(
        analyzer
            .tokens("实行揭榜挂帅制")
            .contains(&"揭榜挂帅制".to_owned())
    );
    // The shipped terms are still there.
    assert!(
        analyzer
            .tokens("申报专精特新")
            .contains(&"专精特新".to_owned())
    );
}

#[test]
fn bad_user_dictionary_line_is_named() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "链长制 100\n# comment\n链主 many n\n").unwrap();
    let err = ChineseAnalyzer::with_user_dictionary(file.path()).unwrap_err();
    match &err {
        SearchError::DictionaryLine {
            dictionary, line, ..
        } => {
            assert_eq!(*line, 3);
            assert_eq!(dictionary, &file.path().display().to_string());
        }
        other => panic!("unexpected {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("many"), "{message}");
    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn unreadable_user_dictionary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let err = ChineseAnalyzer::with_user_dictionary(&missing).unwrap_err();
    assert!(matches!(err, SearchError::DictionaryRead { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.txt"), "{err}");

    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 10\n").unwrap();
    let err = ChineseAnalyzer::with_user_dictionary(&latin1).unwrap_err();
    assert!(err.to_string().contains("latin1.txt"), "{err}");
}
