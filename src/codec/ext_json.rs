//! Extended JSON written straight from raw BSON, byte for byte what `bson`'s
//! `into_canonical_extjson` / `into_relaxed_extjson` and `serde_json` would print, without
//! building a `Bson` tree and a `serde_json::Value` tree first (those two trees were most of
//! the Kafka capture's CPU). Anything unusual (invalid BSON, a repeated field name, a
//! DBPointer) takes the tree path, so the output never differs.

use std::io::Write as _;

use base64::Engine as _;
use bson::{RawArray, RawBsonRef, RawDocument};

use crate::config::JsonFlavour;

/// Appends `d` as Extended JSON in `flavour` (canonical or relaxed; plain JSON goes through
/// [`super::to_json`]).
pub(crate) fn write_document(out: &mut Vec<u8>, d: &RawDocument, flavour: JsonFlavour) {
    let start = out.len();
    if flavour == JsonFlavour::Plain || doc(out, d, flavour).is_none() {
        out.truncate(start);
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &super::to_json(d, flavour));
    }
}

/// Appends one value as Extended JSON in `flavour`.
pub(crate) fn write_value(out: &mut Vec<u8>, v: RawBsonRef<'_>, flavour: JsonFlavour) {
    let start = out.len();
    if flavour == JsonFlavour::Plain || value(out, v, flavour).is_none() {
        out.truncate(start);
        let _ = serde_json::to_writer(&mut *out, &super::raw_to_json(v, flavour));
    }
}

/// A JSON string, escaped as `serde_json` escapes it.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Field names seen in one document: a short list searched in order (most documents), a hash
/// set once it grows, so a document with thousands of fields is not checked in quadratic time.
enum Seen<'a> {
    Few(Vec<&'a str>),
    Many(std::collections::HashSet<&'a str>),
}

impl<'a> Seen<'a> {
    /// Adds `k`; false if it was there already.
    fn insert(&mut self, k: &'a str) -> bool {
        match self {
            Seen::Few(v) if v.contains(&k) => false,
            Seen::Few(v) if v.len() < 16 => {
                v.push(k);
                true
            }
            Seen::Few(v) => {
                let mut set: std::collections::HashSet<&str> = v.drain(..).collect();
                set.insert(k);
                *self = Seen::Many(set);
                true
            }
            Seen::Many(set) => set.insert(k),
        }
    }
}

/// `None`: this document needs the tree path (invalid, or a field name repeats: the tree keeps
/// the last value at the first position).
fn doc(out: &mut Vec<u8>, d: &RawDocument, flavour: JsonFlavour) -> Option<()> {
    out.push(b'{');
    let mut seen = Seen::Few(Vec::new());
    for (i, item) in d.iter().enumerate() {
        let (k, v) = item.ok()?;
        let k = k.as_str();
        if !seen.insert(k) {
            return None;
        }
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        value(out, v, flavour)?;
    }
    out.push(b'}');
    Some(())
}

fn array(out: &mut Vec<u8>, a: &RawArray, flavour: JsonFlavour) -> Option<()> {
    out.push(b'[');
    for (i, item) in a.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        value(out, item.ok()?, flavour)?;
    }
    out.push(b']');
    Some(())
}

/// `{"<key>":"<text>"}`.
fn wrapped_str(out: &mut Vec<u8>, key: &str, text: &str) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    write_str(out, text);
    out.push(b'}');
}

fn value(out: &mut Vec<u8>, v: RawBsonRef<'_>, flavour: JsonFlavour) -> Option<()> {
    let canonical = flavour == JsonFlavour::Canonical;
    match v {
        RawBsonRef::Double(f) => double(out, f, canonical),
        RawBsonRef::String(s) => write_str(out, s),
        RawBsonRef::Document(d) => doc(out, d, flavour)?,
        RawBsonRef::Array(a) => array(out, a, flavour)?,
        RawBsonRef::Boolean(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        RawBsonRef::Null => out.extend_from_slice(b"null"),
        RawBsonRef::Int32(i) if canonical => wrapped_str(out, "$numberInt", &i.to_string()),
        RawBsonRef::Int32(i) => {
            let _ = write!(out, "{i}");
        }
        RawBsonRef::Int64(i) if canonical => wrapped_str(out, "$numberLong", &i.to_string()),
        RawBsonRef::Int64(i) => {
            let _ = write!(out, "{i}");
        }
        RawBsonRef::ObjectId(o) => {
            out.extend_from_slice(b"{\"$oid\":\"");
            out.extend_from_slice(o.to_hex().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        RawBsonRef::DateTime(d) => {
            let ms = d.timestamp_millis();
            // As `bson` does: its year check sees dates past 9999 clamped to 9999-12-31, so
            // every relaxed date from 1970 on is a string.
            if !canonical && ms >= 0 {
                wrapped_str(out, "$date", &d.try_to_rfc3339_string().ok()?);
            } else {
                out.extend_from_slice(b"{\"$date\":");
                wrapped_str(out, "$numberLong", &ms.to_string());
                out.push(b'}');
            }
        }
        RawBsonRef::Decimal128(d) => wrapped_str(out, "$numberDecimal", &d.to_string()),
        RawBsonRef::Binary(b) => {
            out.extend_from_slice(b"{\"$binary\":{\"base64\":\"");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(b.bytes)
                    .as_bytes(),
            );
            let _ = write!(out, "\",\"subType\":\"{:02x}\"}}}}", u8::from(b.subtype));
        }
        RawBsonRef::Timestamp(t) => {
            let _ = write!(
                out,
                "{{\"$timestamp\":{{\"t\":{},\"i\":{}}}}}",
                t.time, t.increment
            );
        }
        RawBsonRef::RegularExpression(r) => {
            let mut options: Vec<char> = r.options.as_str().chars().collect();
            options.sort_unstable();
            let options: String = options.into_iter().collect();
            out.extend_from_slice(b"{\"$regularExpression\":{\"pattern\":");
            write_str(out, r.pattern.as_str());
            out.extend_from_slice(b",\"options\":");
            write_str(out, &options);
            out.extend_from_slice(b"}}");
        }
        RawBsonRef::JavaScriptCode(c) => wrapped_str(out, "$code", c),
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            out.extend_from_slice(b"{\"$code\":");
            write_str(out, c.code);
            out.extend_from_slice(b",\"$scope\":");
            doc(out, c.scope, flavour)?;
            out.push(b'}');
        }
        RawBsonRef::Symbol(s) => wrapped_str(out, "$symbol", s),
        RawBsonRef::Undefined => out.extend_from_slice(b"{\"$undefined\":true}"),
        RawBsonRef::MinKey => out.extend_from_slice(b"{\"$minKey\":1}"),
        RawBsonRef::MaxKey => out.extend_from_slice(b"{\"$maxKey\":1}"),
        // Rare, and its fields are private to `bson`: the tree path writes it.
        RawBsonRef::DbPointer(_) => return None,
    }
    Some(())
}

/// Doubles exactly as `bson` maps them: canonical normal numbers as `Display` text (plus `.0`
/// when whole) and zeros as `0.0` / `-0.0` in `$numberDouble`; NaN and infinities always in
/// `$numberDouble`; every other finite value (relaxed, or a canonical subnormal) as a JSON
/// number printed by `serde_json`.
fn double(out: &mut Vec<u8>, f: f64, canonical: bool) {
    if f.is_nan() {
        let s = if f.is_sign_negative() { "-NaN" } else { "NaN" };
        wrapped_str(out, "$numberDouble", s);
    } else if f.is_infinite() {
        let s = if f.is_sign_negative() {
            "-Infinity"
        } else {
            "Infinity"
        };
        wrapped_str(out, "$numberDouble", s);
    } else if canonical && f.is_normal() {
        let mut s = f.to_string();
        if f.fract() == 0.0 {
            s.push_str(".0");
        }
        wrapped_str(out, "$numberDouble", &s);
    } else if canonical && f == 0.0 {
        let s = if f.is_sign_negative() { "-0.0" } else { "0.0" };
        wrapped_str(out, "$numberDouble", s);
    } else {
        let _ = serde_json::to_writer(&mut *out, &f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, RawDocumentBuf};

    /// The first millisecond of the year 10000.
    const YEAR_10000_MS: i64 = 253_402_300_800_000;
    use proptest::prelude::*;

    /// What the tree path prints.
    fn reference(d: &RawDocument, flavour: JsonFlavour) -> Vec<u8> {
        serde_json::to_vec(&super::super::to_json(d, flavour)).unwrap()
    }

    fn direct(d: &RawDocument, flavour: JsonFlavour) -> Vec<u8> {
        let mut out = Vec::new();
        write_document(&mut out, d, flavour);
        out
    }

    fn arb_double() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(0.0),
            Just(-0.0),
            Just(f64::NAN),
            Just(-f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE / 4.0),
            Just(1e21),
            Just(123456789.0),
            Just(0.1),
            (-1_000_000i64..1_000_000).prop_map(|i| i as f64),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Bson> {
        use bson::spec::BinarySubtype;
        use bson::{Binary, DateTime, Decimal128, JavaScriptCodeWithScope, Regex, Timestamp};
        let leaf = prop_oneof![
            arb_double().prop_map(Bson::Double),
            ".{0,12}".prop_map(Bson::String),
            "[\"\\\\\u{0}-\u{1f}\u{7f}-\u{2028}a-z]{0,6}".prop_map(Bson::String),
            any::<bool>().prop_map(Bson::Boolean),
            Just(Bson::Null),
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(bson::oid::ObjectId::from_bytes(b))),
            prop_oneof![
                any::<i64>(),
                -100_000_000_000_000i64..300_000_000_000_000,
                Just(YEAR_10000_MS - 1),
                Just(YEAR_10000_MS),
                Just(-1i64),
            ]
            .prop_map(|ms| Bson::DateTime(DateTime::from_millis(ms))),
            any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(Decimal128::from_bytes(b))),
            (
                proptest::collection::vec(any::<u8>(), 0..20),
                prop_oneof![Just(0u8), Just(4), Just(3), Just(0x80), Just(0x05)]
            )
                .prop_map(|(bytes, st)| Bson::Binary(Binary {
                    subtype: BinarySubtype::from(st),
                    bytes,
                })),
            (any::<u32>(), any::<u32>())
                .prop_map(|(time, increment)| Bson::Timestamp(Timestamp { time, increment })),
            ("[a-z.*\"\\\\]{0,6}", "[imsx]{0,3}").prop_map(|(p, o)| Bson::RegularExpression(
                Regex {
                    pattern: bson::raw::CString::try_from(p).unwrap(),
                    options: bson::raw::CString::try_from(o).unwrap(),
                }
            )),
            "[a-z ;(){}]{0,10}".prop_map(Bson::JavaScriptCode),
            "[a-z]{0,5}".prop_map(Bson::Symbol),
            Just(Bson::Undefined),
            Just(Bson::MinKey),
            Just(Bson::MaxKey),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Bson::Array),
                proptest::collection::vec(("[a-z$.\"]{0,4}", inner.clone()), 0..5).prop_map(
                    |fields| Bson::Document(fields.into_iter().collect::<bson::Document>())
                ),
                (
                    "[a-z]{0,6}",
                    proptest::collection::vec(("[a-z]{1,3}", inner), 0..3)
                )
                    .prop_map(|(code, fields)| Bson::JavaScriptCodeWithScope(
                        JavaScriptCodeWithScope {
                            code,
                            scope: fields.into_iter().collect(),
                        }
                    )),
            ]
        })
    }

    /// A raw document with the fields in this order, repeated names included.
    fn raw(fields: &[(String, Bson)]) -> RawDocumentBuf {
        let mut d = RawDocumentBuf::new();
        for (k, v) in fields {
            d.append(
                bson::raw::CString::try_from(k.as_str()).unwrap(),
                bson::RawBson::try_from(v.clone()).unwrap(),
            );
        }
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn canonical_and_relaxed_match_bson_byte_for_byte(
            fields in proptest::collection::vec(("[a-z_$]{0,5}", arb_value()), 0..8)
        ) {
            let d = raw(&fields);
            for flavour in [JsonFlavour::Canonical, JsonFlavour::Relaxed] {
                let (a, b) = (direct(&d, flavour), reference(&d, flavour));
                prop_assert_eq!(
                    String::from_utf8_lossy(&a),
                    String::from_utf8_lossy(&b),
                    "{:?}",
                    flavour
                );
            }
        }
    }

    #[test]
    fn repeated_names_and_db_pointers_take_the_tree_path() {
        let d = raw(&[
            ("a".into(), Bson::Int32(1)),
            ("b".into(), Bson::Int32(2)),
            ("a".into(), Bson::Int32(3)),
        ]);
        assert_eq!(
            direct(&d, JsonFlavour::Canonical),
            br#"{"a":{"$numberInt":"3"},"b":{"$numberInt":"2"}}"#
        );
        // {p: DBPointer("a", ObjectId(0102...0c))}, as bytes: `bson` builds none otherwise.
        let mut bytes = vec![26, 0, 0, 0, 0x0c, b'p', 0, 2, 0, 0, 0, b'a', 0];
        bytes.extend(1..=12u8);
        bytes.push(0);
        let d = RawDocument::from_bytes(&bytes).unwrap();
        for flavour in [JsonFlavour::Canonical, JsonFlavour::Relaxed] {
            assert_eq!(direct(d, flavour), reference(d, flavour));
        }
        assert!(String::from_utf8(direct(d, JsonFlavour::Canonical))
            .unwrap()
            .contains("$dbPointer"));
    }

    #[test]
    fn wide_documents_match_with_and_without_a_repeated_name() {
        let mut fields: Vec<(String, Bson)> =
            (0..40).map(|i| (format!("f{i}"), Bson::Int32(i))).collect();
        for flavour in [JsonFlavour::Canonical, JsonFlavour::Relaxed] {
            let d = raw(&fields);
            assert_eq!(direct(&d, flavour), reference(&d, flavour));
        }
        fields.push(("f3".into(), Bson::Int32(-1)));
        let d = raw(&fields);
        assert_eq!(
            direct(&d, JsonFlavour::Canonical),
            reference(&d, JsonFlavour::Canonical)
        );
        assert!(String::from_utf8(direct(&d, JsonFlavour::Canonical))
            .unwrap()
            .contains(r#""f3":{"$numberInt":"-1"}"#));
    }

    #[test]
    fn invalid_bson_is_written_as_the_tree_path_writes_it() {
        // A string whose bytes are not UTF-8.
        let bytes: Vec<u8> = vec![0x0e, 0, 0, 0, 0x02, b's', 0, 0x02, 0, 0, 0, 0xff, 0, 0];
        let d = RawDocument::from_bytes(&bytes).unwrap();
        for flavour in [JsonFlavour::Canonical, JsonFlavour::Relaxed] {
            assert_eq!(direct(d, flavour), reference(d, flavour));
        }
    }
}
