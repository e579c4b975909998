//! Token texts in and out: what parses, which part an error names, and that no secret is ever printed by
//! `Debug` or an error.

use model::auth::{
    node_identity, to_hex, BearerToken, Identity, JoinToken, Role, TokenFormatError, TokenRecord, Usage,
};

const ID: &str = "0123456789ab";
const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const HASH: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

#[test]
fn bearer_token_round_trips() {
    let text = format!("{ID}.{SECRET}");
    let t = BearerToken::parse(&text).unwrap();
    assert_eq!((t.id(), t.secret()), (ID, SECRET));
    assert_eq!(t.to_string(), text);
}

#[test]
fn bearer_token_errors_name_the_part() {
    let upper_secret = SECRET.to_uppercase();
    let cases: Vec<(String, TokenFormatError)> = vec![
        (String::new(), TokenFormatError::Shape),
        (SECRET.to_string(), TokenFormatError::Shape),
        (format!("{ID}{SECRET}"), TokenFormatError::Shape),
        (format!("0123456789a.{SECRET}"), TokenFormatError::Id),
        (format!("0123456789AB.{SECRET}"), TokenFormatError::Id),
        (format!("0123456789abc.{SECRET}"), TokenFormatError::Id),
        (format!("{ID}."), TokenFormatError::Secret),
        (format!("{ID}.{upper_secret}"), TokenFormatError::Secret),
        (format!("{ID}.{SECRET}0"), TokenFormatError::Secret),
        (format!("{ID}.{SECRET}.x"), TokenFormatError::Secret),
        (format!("{ID}.{}g", &SECRET[1..]), TokenFormatError::Secret),
    ];
    for (text, want) in cases {
        let err = BearerToken::parse(&text).unwrap_err();
        assert_eq!(err, want, "{text:?}");
        let msg = err.to_string();
        assert!(!msg.contains(SECRET) && !msg.contains(&SECRET[..16]), "{msg}");
    }
    assert!(TokenFormatError::Id.to_string().starts_with("token id:"));
    assert!(TokenFormatError::Secret.to_string().starts_with("token secret:"));
}

#[test]
fn join_token_round_trips_and_errors_name_the_part() {
    let text = format!("berth1::sha256:{HASH}::{ID}.{SECRET}");
    let t = JoinToken::parse(&text).unwrap();
    assert_eq!(t.ca_hash, HASH);
    assert_eq!(t.credential.id(), ID);
    assert_eq!(t.to_string(), text);

    let cases: Vec<(String, TokenFormatError)> = vec![
        (format!("{ID}.{SECRET}"), TokenFormatError::JoinPrefix),
        (format!("berth2::sha256:{HASH}::{ID}.{SECRET}"), TokenFormatError::JoinPrefix),
        (format!("berth1::sha256:{HASH}:{ID}.{SECRET}"), TokenFormatError::JoinShape),
        (format!("berth1::sha256:{}::{ID}.{SECRET}", &HASH[2..]), TokenFormatError::CaHash),
        (format!("berth1::sha256:{HASH}::{ID}"), TokenFormatError::Shape),
        (format!("berth1::sha256:{HASH}::xyz.{SECRET}"), TokenFormatError::Id),
        (format!("berth1::sha256:{HASH}::{ID}.{}", &SECRET[1..]), TokenFormatError::Secret),
    ];
    for (text, want) in cases {
        let err = JoinToken::parse(&text).unwrap_err();
        assert_eq!(err, want, "{text:?}");
        assert!(!err.to_string().contains(&SECRET[..16]), "{err}");
    }
}

#[test]
fn debug_redacts_secrets() {
    let t = BearerToken::parse(&format!("{ID}.{SECRET}")).unwrap();
    let j = JoinToken { ca_hash: HASH.into(), credential: t.clone() };
    for shown in [format!("{t:?}"), format!("{j:?}"), format!("{:?}", Some(&j))] {
        assert!(!shown.contains(SECRET) && !shown.contains(&SECRET[..8]), "{shown}");
        assert!(shown.contains(ID) && shown.contains("****"), "{shown}");
    }
}

#[test]
fn record_is_camel_case_and_expires() {
    let record: TokenRecord = serde_json::from_value(serde_json::json!({
        "id": ID, "role": "node", "usage": "credential", "secretHash": HASH, "node": "node-1",
        "expires": "2026-01-01T00:01:00Z", "created": "2026-01-01T00:00:00Z", "issuedBy": "aaaaaaaaaaaa",
        "futureField": 1,
    }))
    .unwrap();
    assert_eq!((record.role, record.usage), (Role::Node, Usage::Credential));
    let back = serde_json::to_value(&record).unwrap();
    assert_eq!(back["secretHash"], HASH);
    assert_eq!(back["issuedBy"], "aaaaaaaaaaaa");
    assert!(back.get("description").is_none());
    let at = |s: &str| humantime::parse_rfc3339(s).unwrap();
    assert!(!record.is_expired(at("2026-01-01T00:00:59Z")));
    assert!(record.is_expired(at("2026-01-01T00:01:00Z")));
    assert_eq!(record.identity().unwrap().to_string(), "system:node:node-1");
    let never = TokenRecord { expires: None, ..record.clone() };
    assert!(!never.is_expired(at("2100-01-01T00:00:00Z")));
    let nodeless = TokenRecord { node: None, ..record };
    assert_eq!(nodeless.identity(), None);
}

#[test]
fn identity_names() {
    assert_eq!(Identity::Admin { token_id: None }.to_string(), "berth:admin:bootstrap");
    assert_eq!(Identity::Admin { token_id: Some(ID.into()) }.to_string(), "berth:admin:0123456789ab");
    assert_eq!(Identity::Proxy { token_id: ID.into() }.to_string(), "berth:proxy:0123456789ab");
    let node = Identity::Node { node: "n1".into(), token_id: ID.into() };
    assert_eq!(node.to_string(), node_identity("n1"));
    assert_eq!((node.role(), node.node()), (Role::Node, Some("n1")));
    assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
    assert!(model::auth::is_token_id(ID) && !model::auth::is_token_id("0123456789AB"));
    for r in [Role::Node, Role::Proxy, Role::Admin] {
        assert_eq!(Role::parse(r.as_str()), Some(r));
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
    assert_eq!(Usage::parse("join"), Some(Usage::Join));
    assert_eq!(Usage::parse("Join"), None);
}
