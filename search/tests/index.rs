//! Indexing, querying and snippets on an in-RAM tantivy index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::LazyLock;

use search::{ChineseAnalyzer, snippet, text_options, text_query};
use tantivy::collector::TopDocs;
use tantivy::query::Query;
use tantivy::schema::{Field, STRING, Schema, Value};
use tantivy::{Index, Searcher, TantivyDocument, doc};

static ANALYZER: LazyLock<ChineseAnalyzer> = LazyLock::new(|| ChineseAnalyzer::new().unwrap());

struct Corpus {
    searcher: Searcher,
    id: Field,
    title: Field,
    body: Field,
}

/// An in-RAM index of `(id, title, body)` documents.
fn corpus(docs: &[(&str, &str, &str)]) -> Corpus {
    let mut schema = Schema::builder();
    let id = schema.add_text_field("id", STRING | tantivy::schema::STORED);
    let title = schema.add_text_field("title", text_options());
    let body = schema.add_text_field("body", text_options());
    let index = Index::create_in_ram(schema.build());
    ANALYZER.register(&index);
    let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
    for (doc_id, doc_title, doc_body) in docs {
        writer
            .add_document(doc!(id => *doc_id, title => *doc_title, body => *doc_body))
            .unwrap();
    }
    writer.commit().unwrap();
    let searcher = index.reader().unwrap().searcher();
    Corpus {
        searcher,
        id,
        title,
        body,
    }
}

impl Corpus {
    fn query(&self, text: &str) -> Box<dyn Query> {
        text_query(&ANALYZER, &[self.title, self.body], text).unwrap()
    }

    /// The ids of the documents matching `text`, sorted.
    fn ids(&self, text: &str) -> Vec<String> {
        let hits = self
            .searcher
            .search(
                &self.query(text),
                &TopDocs::with_limit(100).order_by_score(),
            )
            .unwrap();
        let mut ids: Vec<String> = hits
            .iter()
            .map(|(_, address)| {
                let doc: TantivyDocument = self.searcher.doc(*address).unwrap();
                doc.get_first(self.id)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap()
            })
            .collect();
        ids.sort();
        ids
    }

    /// The snippet of `field` of the best hit for `text`.
    fn snippet(&self, text: &str, field: Field, max_chars: usize) -> String {
        let query = self.query(text);
        let hits = self
            .searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())
            .unwrap();
        let doc: TantivyDocument = self.searcher.doc(hits[0].1).unwrap();
        snippet(&self.searcher, &*query, field, &doc, max_chars).unwrap()
    }
}

fn five() -> Corpus {
    corpus(&[
        (
            "zjtx",
            "关于开展专精特新中小企业认定工作的通知",
            "各有关单位：为培育专精特新中小企业，现组织开展2024年度专精特新中小企业认定工作。",
        ),
        (
            "zj",
            "提升核心竞争力",
            "引导中小企业走专精发展道路，深耕细分市场。",
        ),
        ("tx", "拓展市场", "支持企业培育特新产品，拓展国内外市场。"),
        (
            "gq",
            "国家高新技术企业认定管理办法",
            "本办法所称的高新技术企业，是指在国家重点支持的高新技术领域内持续进行研究开发的居民企业。",
        ),
        (
            "wg",
            "稳岗补贴申领指南",
            "符合条件的参保单位可申请稳岗补贴。",
        ),
    ])
}

#[test]
fn zhuanjingtexin_finds_exactly_the_document_that_says_it() {
    let c = five();
    assert_eq!(c.ids("专精特新"), ["zjtx"]);
    assert_eq!(c.ids("  专精特新！"), ["zjtx"]);
    assert_eq!(c.ids("专精"), ["zj"]);
    // 特新 is no word: it is 特 + 新, and only the document with those characters has both.
    assert_eq!(c.ids("特新"), ["tx"]);
}

#[test]
fn gaoxin_finds_exactly_its_document() {
    let c = five();
    assert_eq!(c.ids("高新技术企业"), ["gq"]);
}

#[test]
fn all_tokens_must_match_across_fields() {
    let c = five();
    assert_eq!(c.ids("认定"), ["gq", "zjtx"]);
    // 认定 in both; 通知 only in zjtx's title, 居民 only in gq's body.
    assert_eq!(c.ids("认定 通知"), ["zjtx"]);
    assert_eq!(c.ids("认定居民"), ["gq"]);
    assert!(c.ids("专精特新 高新技术企业").is_empty());
    // 补贴 is inside 稳岗补贴, 企业 inside 高新技术企业.
    assert_eq!(c.ids("补贴"), ["wg"]);
    assert_eq!(c.ids("企业"), ["gq", "tx", "zj", "zjtx"]);
}

#[test]
fn compound_terms_are_found_by_their_parts() {
    let c = corpus(&[
        (
            "xjr",
            "专精特新小巨人企业名单",
            "公示第五批专精特新小巨人企业。",
        ),
        (
            "jj",
            "研发费用加计扣除政策",
            "企业研发费用加计扣除比例提高到100%。",
        ),
    ]);
    assert_eq!(c.ids("专精特新"), ["xjr"]);
    assert_eq!(c.ids("小巨人"), ["xjr"]);
    assert_eq!(c.ids("专精特新小巨人"), ["xjr"]);
    assert_eq!(c.ids("加计扣除"), ["jj"]);
    assert_eq!(c.ids("研发费用加计扣除"), ["jj"]);
    assert_eq!(
        c.snippet("专精特新", c.body, 100),
        "公示第五批<em>专精特新</em>小巨人企业。"
    );
    assert_eq!(
        c.snippet("专精特新小巨人", c.body, 100),
        "公示第五批<em>专精特新小巨人</em>企业。"
    );
}

#[test]
fn sub_words_of_general_words_are_found_and_highlighted() {
    let c = corpus(&[
        ("cy", "住宿和餐饮业纾困", "对住宿餐饮企业给予房租减免。"),
        ("wm", "支持外贸企业", "支持中小微外贸企业投保出口信用保险。"),
        (
            "wg",
            "失业保险稳岗返还",
            "符合条件的参保单位可享受稳岗返还。",
        ),
    ]);
    assert_eq!(c.ids("餐饮"), ["cy"]);
    assert_eq!(c.ids("外贸"), ["wm"]);
    assert_eq!(c.ids("稳岗"), ["wg"]);
    assert_eq!(
        c.snippet("餐饮", c.body, 100),
        "对住宿<em>餐饮</em>企业给予房租减免。"
    );
}

#[test]
fn synonyms_find_what_the_text_says_in_other_words() {
    let c = corpus(&[
        ("yg", "企业用工服务", "为重点企业提供用工保障。"),
        ("zp", "春风行动", "组织专场招聘会。"),
        (
            "tsx",
            "首台（套）保险补偿",
            "对首台（套）重大技术装备给予保险补偿。",
        ),
        ("fz", "房租减免", "减免小微企业租金。"),
    ]);
    assert_eq!(c.ids("招工"), ["yg", "zp"]);
    assert_eq!(c.ids("首台套"), ["tsx"]);
    assert_eq!(c.ids("房租"), ["fz"]);
    assert_eq!(
        c.snippet("招工", c.body, 100),
        "为重点企业提供<em>用工</em>保障。"
    );
    // A synonym widens one word of the query; the others must still match.
    assert!(c.ids("招工 保险").is_empty());
}

#[test]
fn empty_queries_are_none() {
    let c = five();
    for text in ["", "   ", "，。！？", "😀", "\u{0}\u{200b}"] {
        assert!(
            text_query(&ANALYZER, &[c.title, c.body], text).is_none(),
            "{text:?}"
        );
    }
    assert!(text_query(&ANALYZER, &[], "专精特新").is_none());
}

#[test]
fn snippet_highlights_the_term() {
    let c = five();
    let html = c.snippet("专精特新", c.body, 150);
    assert!(html.contains("<em>专精特新</em>"), "{html}");
    assert_eq!(
        html,
        "各有关单位：为培育<em>专精特新</em>中小企业，现组织开展2024年度<em>专精特新</em>中小企业认定工作。"
    );
    let title = c.snippet("专精特新", c.title, 150);
    assert_eq!(title, "关于开展<em>专精特新</em>中小企业认定工作的通知");
}

/// The visible text of a snippet: tags removed, entities decoded.
fn visible(html: &str) -> String {
    html.replace("<em>", "")
        .replace("</em>", "")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[test]
fn snippet_is_bounded_and_picks_the_best_window() {
    let filler = "本条款适用于全市范围内的各类市场主体。".repeat(20);
    let body = format!(
        "{filler}对首次入规企业给予奖励。{filler}对首次入规的规上企业，一次性给予首次入规奖励，并优先推荐申报专精特新。{filler}"
    );
    let c = corpus(&[("long", "标题", &body)]);
    let html = c.snippet("首次入规", c.body, 60);
    let text = visible(&html);
    assert!(text.chars().count() <= 60, "{html}");
    assert!(body.contains(&text), "{html}");
    // The window with two of the three mentions, not the earlier one with one.
    assert_eq!(html.matches("<em>首次入规</em>").count(), 2, "{html}");
    assert!(html.contains("规上企业"), "{html}");

    let html = c.snippet("首次入规 专精特新", c.body, 60);
    assert!(html.contains("<em>专精特新</em>"), "{html}");
    assert!(html.contains("<em>首次入规</em>"), "{html}");

    for max in [1, 2, 3, 4, 5, 7, 10] {
        let html = c.snippet("首次入规", c.body, max);
        assert!(visible(&html).chars().count() <= max, "{max}: {html}");
        if max >= 4 {
            assert!(html.contains("<em>首次入规</em>"), "{max}: {html}");
        }
    }
    assert_eq!(c.snippet("首次入规", c.body, 0), "");
}

#[test]
fn snippet_escapes_html() {
    let c = corpus(&[(
        "x",
        "标题",
        "<script>alert('专精特新')</script> & \"营商环境\" <em>伪造</em>",
    )]);
    let html = c.snippet("专精特新 营商环境", c.body, 200);
    assert_eq!(
        html,
        "&lt;script&gt;alert(&#39;<em>专精特新</em>&#39;)&lt;/script&gt; &amp; &quot;<em>营商环境</em>&quot; &lt;em&gt;伪造&lt;/em&gt;"
    );
}

#[test]
fn snippet_without_match_in_field_is_the_start_of_the_text() {
    let c = five();
    // The query matches zjtx's title (通知) but nothing in its body.
    let html = c.snippet("通知", c.body, 10);
    assert_eq!(html, "各有关单位：为培育专");
}

#[test]
fn snippet_errors_on_a_field_without_tokenizer() {
    let c = five();
    let query = c.query("专精特新");
    let doc: TantivyDocument = c
        .searcher
        .doc(
            c.searcher
                .search(&query, &TopDocs::with_limit(1).order_by_score())
                .unwrap()[0]
                .1,
        )
        .unwrap();
    // `id` is a STRING field: it has the "raw" tokenizer, so this works…
    assert!(snippet(&c.searcher, &*query, c.id, &doc, 10).is_ok());
    // …while an index without the "zh" tokenizer registered is an error, not a panic.
    let mut schema = Schema::builder();
    let body = schema.add_text_field("body", text_options());
    let index = Index::create_in_ram(schema.build());
    let searcher = index.reader().unwrap().searcher();
    let err = snippet(&searcher, &*query, body, &TantivyDocument::new(), 10).unwrap_err();
    assert!(err.to_string().contains("zh"), "{err}");
}

#[test]
fn registered_tokenizer_indexes_what_tokens_returns() {
    let index = Index::create_in_ram(Schema::builder().build());
    ANALYZER.register(&index);
    let mut zh = index.tokenizers().get(search::TOKENIZER).unwrap();
    let text = "对专精特新小巨人企业给予稳岗补贴，ＡＢＣ v1.2 😀 高新技术企业。";
    let mut stream = zh.token_stream(text);
    let mut streamed = Vec::new();
    while let Some(token) = tantivy::tokenizer::TokenStream::next(&mut stream) {
        // Offsets point at the token in the original text (case and width aside).
        let original = &text[token.offset_from..token.offset_to];
        assert!(
            original == token.text || original.chars().count() == token.text.chars().count(),
            "{token:?}"
        );
        streamed.push((token.text.clone(), token.position));
    }
    let texts: Vec<String> = streamed.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(texts, ANALYZER.tokens(text));
    // A compound's inner terms share its position.
    let position = |word: &str| streamed.iter().find(|(t, _)| t == word).unwrap().1;
    assert_eq!(position("专精特新小巨人"), position("专精特新"));
    assert_eq!(position("专精特新小巨人"), position("小巨人"));
    assert_eq!(position("企业"), position("小巨人") + 1);
}
