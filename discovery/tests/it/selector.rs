//! Selector parsing (table-driven, with error positions), the display round trip (property), and label
//! key/value validation.

use discovery::labels::{validate_key, validate_value, LabelError};
use discovery::{Operator, Requirement, Selector};
use proptest::prelude::*;

#[test]
fn valid_selectors_parse_to_their_normal_form() {
    // (input, expected Display of the parsed selector)
    let cases: &[(&str, &str)] = &[
        ("", ""),
        ("   ", ""),
        ("a=b", "a=b"),
        ("a==b", "a=b"),
        (" a = b ", "a=b"),
        ("a == b", "a=b"),
        ("a!=b", "a!=b"),
        ("a != b", "a!=b"),
        ("a in (y,x,x)", "a in (x,y)"),
        ("a in(x)", "a in (x)"),
        ("a in ( x , y )", "a in (x,y)"),
        ("a notin (x)", "a notin (x)"),
        ("a notin (b,a,b)", "a notin (a,b)"),
        ("a", "a"),
        ("!a", "!a"),
        ("! a", "!a"),
        ("a=b,c!=d,e in (f),g notin (h),i,!j", "a=b,c!=d,e in (f),g notin (h),i,!j"),
        ("x=a , y=b", "x=a,y=b"),
        ("\ta=b\n", "a=b"),
        ("a=", "a="),
        ("a==", "a="),
        ("a=,b", "a=,b"),
        ("a= ,b", "a=,b"),
        ("a!=", "a!="),
        ("example.com/app=web", "example.com/app=web"),
        ("k8s.io/a-b_c.d=V-1.2_x", "k8s.io/a-b_c.d=V-1.2_x"),
        ("in in (in,notin)", "in in (in,notin)"),
        ("notin", "notin"),
        ("!in", "!in"),
        ("a=in", "a=in"),
        ("b=2,a=1", "b=2,a=1"),
    ];
    for (input, want) in cases {
        let parsed = Selector::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"));
        assert_eq!(parsed.to_string(), *want, "display of {input:?}");
        assert_eq!(Selector::parse(want).as_ref(), Ok(&parsed), "reparse of {want:?}");
    }
}

#[test]
fn parsed_requirements_have_the_expected_structure() {
    let req = |key: &str, op, values: &[&str]| Requirement {
        key: key.into(),
        op,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let cases: Vec<(&str, Vec<Requirement>)> = vec![
        ("a==b", vec![req("a", Operator::Equals, &["b"])]),
        ("a=", vec![req("a", Operator::Equals, &[""])]),
        ("a!=b", vec![req("a", Operator::NotEquals, &["b"])]),
        ("a in (z,y,z)", vec![req("a", Operator::In, &["y", "z"])]),
        ("a notin (x)", vec![req("a", Operator::NotIn, &["x"])]),
        ("a,!b", vec![req("a", Operator::Exists, &[]), req("b", Operator::DoesNotExist, &[])]),
    ];
    for (input, want) in cases {
        assert_eq!(Selector::parse(input).map(|s| s.requirements), Ok(want), "{input:?}");
    }
}

#[test]
fn invalid_selectors_report_the_offending_position() {
    let long = format!("a={}", "v".repeat(64));
    // (input, byte offset of the offending token, a fragment of the message)
    let cases: &[(&str, usize, &str)] = &[
        ("a=b,", 4, "expected a label key"),
        (",a", 0, "expected a label key"),
        ("a=b,,c", 4, "expected a label key"),
        ("  =b", 2, "expected a label key"),
        ("a=b c=d", 4, "expected ',' or end"),
        ("a b", 2, "expected '='"),
        ("a!", 1, "expected '='"),
        ("a=b=c", 3, "expected ',' or end"),
        ("!a=b", 2, "expected ',' or end"),
        ("!", 1, "label key after '!'"),
        ("!,a", 1, "label key after '!'"),
        ("a in x", 5, "expected '(' after 'in'"),
        ("a notin", 7, "expected '(' after 'notin'"),
        ("a in ()", 6, "needs at least one value"),
        ("a notin ( )", 10, "needs at least one value"),
        ("a in (x", 7, "expected ',' or ')'"),
        ("a in (x,)", 8, "expected a label value"),
        ("a in (x y)", 8, "expected ',' or ')'"),
        ("a in (x,-y)", 8, "invalid label value"),
        ("a in (x),", 9, "expected a label key"),
        ("a>1", 1, "unsupported character '>'"),
        ("a<1", 1, "unsupported character '<'"),
        ("-a=b", 0, "invalid label key"),
        ("a=-b", 2, "invalid label value"),
        ("a = b-", 4, "invalid label value"),
        ("a/b/c=d", 0, "invalid label key"),
        ("A.com/b=c", 0, "invalid label key"),
        ("x, é=b", 3, "invalid label key"),
        ("a=(b)", 2, "expected a label value"),
        (&long, 2, "at most 63"),
    ];
    for (input, position, fragment) in cases {
        match Selector::parse(input) {
            Ok(s) => panic!("{input:?} should not parse, got {s}"),
            Err(e) => {
                assert_eq!(e.position, *position, "position for {input:?}: {e}");
                assert!(e.message.contains(fragment), "message for {input:?}: {:?} lacks {fragment:?}", e.message);
                assert!(e.to_string().contains(&format!("position {position}")), "{e}");
            }
        }
    }
}

#[test]
fn from_labels_round_trips_and_matches() {
    let labels = [("app".to_string(), "web".to_string()), ("tier".to_string(), String::new())].into();
    let s = Selector::from_labels(&labels);
    assert_eq!(s.to_string(), "app=web,tier=");
    assert_eq!(Selector::parse(&s.to_string()), Ok(s.clone()));
    assert!(s.matches(&labels));
}

#[test]
fn matching_follows_kubernetes_semantics() {
    let labels: discovery::Labels = [("app".to_string(), "web".to_string())].into();
    let cases: &[(&str, bool)] = &[
        ("", true),
        ("app=web", true),
        ("app=db", false),
        ("app!=db", true),
        ("other!=x", true), // an absent key is "not equal"
        ("app in (db,web)", true),
        ("app notin (web)", false),
        ("other notin (web)", true),
        ("app", true),
        ("!app", false),
        ("!other", true),
        ("other=", false), // `k=` needs the key present with an empty value
        ("app=web,!other", true),
    ];
    for (input, want) in cases {
        let s = Selector::parse(input).expect("valid selector");
        assert_eq!(s.matches(&labels), *want, "{input:?}");
    }
}

#[test]
fn selector_serde_uses_the_string_form() {
    let s = Selector::parse("a in (y,x), !b").expect("valid");
    let json = serde_json::to_string(&s).expect("serializes");
    assert_eq!(json, r#""a in (x,y),!b""#);
    assert_eq!(serde_json::from_str::<Selector>(&json).expect("deserializes"), s);
    assert!(serde_json::from_str::<Selector>(r#""a in ()""#).is_err());
}

#[test]
fn label_keys_are_validated() {
    let max_name = "a".repeat(63);
    let long_name = "a".repeat(64);
    let max_prefix = format!("{}/a", ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join("."));
    let long_prefix = format!("{}/a", ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join("."));
    assert_eq!(max_prefix.len(), 253 + 2);
    let valid =
        ["a", "app", "A", "a.b-c_d", "example.com/app", "a/b", "k8s.io/x", "1", "x-1.y_2", &max_name, &max_prefix];
    for k in valid {
        assert_eq!(validate_key(k), Ok(()), "{k:?}");
    }
    let invalid = [
        "",
        "/a",
        "a/",
        "-a",
        "a-",
        "_a",
        "a.",
        "a b",
        "a=b",
        "é",
        &long_name,
        "Example.com/a",
        "ex_ample.com/a",
        "a..b/c",
        "-a.com/x",
        "a-.com/x",
        "a/b/c",
        &long_prefix,
    ];
    for k in invalid {
        assert!(matches!(validate_key(k), Err(LabelError::Key { .. })), "{k:?} should be invalid");
    }
}

#[test]
fn label_values_are_validated() {
    let max = "v".repeat(63);
    let long = "v".repeat(64);
    for v in ["", "a", "A-b_c.d", "1", "x.y", &max] {
        assert_eq!(validate_value(v), Ok(()), "{v:?}");
    }
    for v in ["-a", "a-", ".a", "a b", "a/b", "é", "a,b", &long] {
        assert!(matches!(validate_value(v), Err(LabelError::Value { .. })), "{v:?} should be invalid");
    }
    let labels = [("app".to_string(), "-bad".to_string())].into();
    assert!(discovery::labels::validate(&labels).is_err());
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?"
}

fn key() -> impl Strategy<Value = String> {
    (proptest::option::of("[a-z0-9]{1,4}(\\.[a-z0-9]{1,4}){0,2}"), name()).prop_map(|(p, n)| match p {
        Some(p) => format!("{p}/{n}"),
        None => n,
    })
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let value = || prop_oneof![Just(String::new()), name()];
    let list = || {
        proptest::collection::vec(name(), 1..4).prop_map(|mut v| {
            v.sort();
            v.dedup();
            v
        })
    };
    prop_oneof![
        (key(), value()).prop_map(|(key, v)| Requirement { key, op: Operator::Equals, values: vec![v] }),
        (key(), value()).prop_map(|(key, v)| Requirement { key, op: Operator::NotEquals, values: vec![v] }),
        (key(), list()).prop_map(|(key, values)| Requirement { key, op: Operator::In, values }),
        (key(), list()).prop_map(|(key, values)| Requirement { key, op: Operator::NotIn, values }),
        key().prop_map(|key| Requirement { key, op: Operator::Exists, values: vec![] }),
        key().prop_map(|key| Requirement { key, op: Operator::DoesNotExist, values: vec![] }),
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    proptest::collection::vec(requirement(), 0..5).prop_map(|requirements| Selector { requirements })
}

/// Render a requirement the way a person might type it: extra spaces, `==`, unsorted duplicate values.
fn render_loosely(r: &Requirement, spaces: &[usize], double_eq: bool, dup: bool) -> String {
    let sp = |i: usize| " ".repeat(spaces[i % spaces.len()]);
    let mut values = r.values.clone();
    values.reverse();
    if dup {
        values.extend(r.values.first().cloned());
    }
    let list = values.join(&format!("{},{}", sp(5), sp(6)));
    let eq = if double_eq { "==" } else { "=" };
    let v = r.values.first().cloned().unwrap_or_default();
    match r.op {
        Operator::Equals => format!("{}{}{}{eq}{}{v}{}", sp(0), r.key, sp(1), sp(2), sp(3)),
        Operator::NotEquals => format!("{}{}{}!={}{v}{}", sp(0), r.key, sp(1), sp(2), sp(3)),
        Operator::In => format!("{}{} in{}({}{list}{}){}", sp(0), r.key, sp(1), sp(2), sp(3), sp(4)),
        Operator::NotIn => format!("{}{} notin{}({}{list}{}){}", sp(0), r.key, sp(1), sp(2), sp(3), sp(4)),
        Operator::Exists => format!("{}{}{}", sp(0), r.key, sp(1)),
        Operator::DoesNotExist => format!("{}!{}{}{}", sp(0), sp(1), r.key, sp(2)),
    }
}

proptest! {
    #[test]
    fn display_round_trips(s in selector()) {
        prop_assert_eq!(Selector::parse(&s.to_string()), Ok(s));
    }

    #[test]
    fn loose_spelling_parses_to_the_normal_form(
        s in selector(),
        spaces in proptest::collection::vec(0usize..3, 7),
        double_eq in any::<bool>(),
        dup in any::<bool>(),
    ) {
        let text: Vec<String> =
            s.requirements.iter().map(|r| render_loosely(r, &spaces, double_eq, dup)).collect();
        let text = text.join(",");
        prop_assert_eq!(Selector::parse(&text), Ok(s), "input {:?}", text);
    }

    #[test]
    fn arbitrary_input_never_panics_and_errors_point_inside(input in "[a-z=!,() <>.\\-/]{0,24}") {
        if let Err(e) = Selector::parse(&input) {
            prop_assert!(e.position <= input.len());
        }
    }
}
