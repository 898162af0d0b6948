//! The shipped JSON Schemas (`data/schema/`) checked by an implementation other than ours
//! (Python `jsonschema`, draft 2020-12): every sample policy and a generated population pass,
//! and lines certgate refuses for their shape are refused by the schema too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::Command;

/// Validates each line of `lines` against `schema` with Python `jsonschema`; true for a valid
/// line. None when Python or the module is missing outside CI.
fn python_validates(schema: &str, lines: &[String]) -> Option<Vec<bool>> {
    let dir = tempfile::tempdir().unwrap();
    let schema_path = dir.path().join("schema.json");
    std::fs::write(&schema_path, schema).unwrap();
    let data = dir.path().join("lines.jsonl");
    let mut f = std::fs::File::create(&data).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for line in open(sys.argv[2], encoding="utf-8"):
    print("ok" if v.is_valid(json.loads(line)) else "bad")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&schema_path)
        .arg(&data)
        .output();
    let ci = std::env::var_os("CI").is_some();
    match out {
        Ok(out) if out.status.success() => Some(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| l == "ok")
                .collect(),
        ),
        Ok(out) if !ci && String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            eprintln!("skipped: Python jsonschema is not installed (.ci/run installs it)");
            None
        }
        Err(e) if !ci => {
            eprintln!("skipped: no python3 ({e})");
            None
        }
        other => panic!("python3 jsonschema failed: {other:?}"),
    }
}

#[test]
fn every_sample_policy_passes_the_policy_schema_and_bad_shapes_fail_it() {
    let good: Vec<String> = policies::SAMPLE_POLICIES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let first = good[0].clone();
    let bad: Vec<String> = [
        ("\"version\":1", "\"version\":0"),
        ("\"category\":\"", "\"category\":\"其他"),
        ("\"id\":\"", "\"id\":\"has space "),
        ("\"window\":{", "\"colour\":1,\"window\":{"),
        ("\"start\":\"", "\"start\":\"2026/"),
        ("\"kind\":\"", "\"kind\":\"size_"),
    ]
    .iter()
    .map(|(from, to)| {
        assert!(first.contains(from), "{from}");
        first.replacen(from, to, 1)
    })
    .chain([
        first.replacen("\"title\":", "\"untitled\":", 1),
        r#"{"kind":"age_years"}"#.to_owned(),
    ])
    .collect();
    for line in &bad {
        assert!(
            policies::Policy::from_json(line).is_err(),
            "certgate refuses {line}"
        );
    }
    let Some(verdicts) = python_validates(
        policies::POLICY_SCHEMA,
        &[good.clone(), bad.clone()].concat(),
    ) else {
        return;
    };
    let (on_good, on_bad) = verdicts.split_at(good.len());
    for (line, ok) in good.iter().zip(on_good) {
        assert!(ok, "the schema refuses a sample policy: {line}");
    }
    for (line, ok) in bad.iter().zip(on_bad) {
        assert!(!ok, "the schema accepts what certgate refuses: {line}");
    }
}

#[test]
fn a_generated_population_passes_the_profile_schema_and_bad_shapes_fail_it() {
    let day = time::Date::from_calendar_date(2026, time::Month::November, 1).unwrap();
    let good: Vec<String> = policies::generate::population(2000, 9, day)
        .map(|p| serde_json::to_string(&p).unwrap())
        .collect();
    let first = good[0].clone();
    let edit = |field: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&first).unwrap();
        match value {
            serde_json::Value::Null => {
                v.as_object_mut().unwrap().remove(field);
            }
            value => v[field] = value,
        }
        v.to_string()
    };
    let bad: Vec<String> = vec![
        edit("uscc", "x9144030500009P38E7".into()),
        edit("name", serde_json::Value::Null),
        edit("updated", "yesterday".into()),
        edit("scale", "巨".into()),
        edit("region", "1440305".into()),
        edit("employees", (-1).into()),
        edit("colour", "red".into()),
    ];
    for line in &bad {
        assert!(
            policies::Profile::from_json(line).is_err(),
            "certgate refuses {line}"
        );
    }
    let Some(verdicts) = python_validates(
        policies::PROFILE_SCHEMA,
        &[good.clone(), bad.clone()].concat(),
    ) else {
        return;
    };
    let (on_good, on_bad) = verdicts.split_at(good.len());
    for (line, ok) in good.iter().zip(on_good) {
        assert!(ok, "the schema refuses a generated profile: {line}");
    }
    for (line, ok) in bad.iter().zip(on_bad) {
        assert!(!ok, "the schema accepts what certgate refuses: {line}");
    }
}
