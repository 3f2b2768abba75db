//! Canonical JSON: compact, with the keys of every object sorted (by their bytes), whatever
//! order a type declares its fields in and whatever map type serde_json was built with. It
//! is the input of every hash: a record's material hash, a ledger entry's digest, a report
//! manifest's signature.
//!
//! The serializer writes a value once, into one buffer: an object whose keys arrive out of
//! order has its members moved into order when it ends. Nothing builds a `serde_json::Value`
//! of the whole, so an entry holding a large diff costs its bytes, not a tree several times
//! their size.

use std::io;
use std::ops::Range;

use serde::Serialize;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use serde_json::Value;

/// The canonical JSON of a value.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    to_canonical_vec(value).expect("a JSON value serializes into memory")
}

/// The canonical JSON of anything serde serializes (an error for what JSON cannot hold, such
/// as a map with non-string keys).
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    let formatter = Canonical {
        out: &mut out,
        objects: Vec::new(),
        keys: Vec::new(),
        in_key: false,
    };
    // The formatter writes into `out` itself; the serializer's own writer stays unused.
    let mut serializer = serde_json::Serializer::with_formatter(io::sink(), formatter);
    value.serialize(&mut serializer)?;
    Ok(out)
}

/// An object being written: where its members start, and each member's raw key (in
/// `Canonical::keys`) and bytes (`"key":value`, in `Canonical::out`).
struct Object {
    members: Vec<Member>,
}

struct Member {
    key: Range<usize>,
    bytes: Range<usize>,
}

struct Canonical<'a> {
    out: &'a mut Vec<u8>,
    /// The objects open around the current position, innermost last.
    objects: Vec<Object>,
    /// The unescaped keys of the open objects' members, to sort by.
    keys: Vec<u8>,
    in_key: bool,
}

impl Canonical<'_> {
    fn member(&mut self) -> &mut Member {
        self.objects
            .last_mut()
            .and_then(|object| object.members.last_mut())
            .expect("serde_json writes keys and values inside an object")
    }

    /// Puts the members of the object that starts at `members[0]` in key order.
    fn sort(&mut self, object: Object) {
        let Some(first) = object.members.first() else {
            return;
        };
        let key = |member: &Member| &self.keys[member.key.clone()];
        let sorted = object
            .members
            .windows(2)
            .all(|pair| key(&pair[0]) <= key(&pair[1]));
        let keys_start = first.key.start;
        if !sorted {
            let start = first.bytes.start;
            let written = self.out.split_off(start);
            let mut order: Vec<&Member> = object.members.iter().collect();
            order.sort_by(|a, b| key(a).cmp(key(b)));
            for (index, member) in order.into_iter().enumerate() {
                if index > 0 {
                    self.out.push(b',');
                }
                let bytes = (member.bytes.start - start)..(member.bytes.end - start);
                self.out.extend_from_slice(&written[bytes]);
            }
        }
        self.keys.truncate(keys_start);
    }
}

// Every method is written out: the trait's defaults write to the serializer's writer, which
// this formatter does not use.
impl Formatter for Canonical<'_> {
    fn write_null<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.write_null(self.out)
    }

    fn write_bool<W: ?Sized + io::Write>(&mut self, _: &mut W, value: bool) -> io::Result<()> {
        CompactFormatter.write_bool(self.out, value)
    }

    fn write_i8<W: ?Sized + io::Write>(&mut self, _: &mut W, value: i8) -> io::Result<()> {
        CompactFormatter.write_i8(self.out, value)
    }

    fn write_i16<W: ?Sized + io::Write>(&mut self, _: &mut W, value: i16) -> io::Result<()> {
        CompactFormatter.write_i16(self.out, value)
    }

    fn write_i32<W: ?Sized + io::Write>(&mut self, _: &mut W, value: i32) -> io::Result<()> {
        CompactFormatter.write_i32(self.out, value)
    }

    fn write_i64<W: ?Sized + io::Write>(&mut self, _: &mut W, value: i64) -> io::Result<()> {
        CompactFormatter.write_i64(self.out, value)
    }

    fn write_i128<W: ?Sized + io::Write>(&mut self, _: &mut W, value: i128) -> io::Result<()> {
        CompactFormatter.write_i128(self.out, value)
    }

    fn write_u8<W: ?Sized + io::Write>(&mut self, _: &mut W, value: u8) -> io::Result<()> {
        CompactFormatter.write_u8(self.out, value)
    }

    fn write_u16<W: ?Sized + io::Write>(&mut self, _: &mut W, value: u16) -> io::Result<()> {
        CompactFormatter.write_u16(self.out, value)
    }

    fn write_u32<W: ?Sized + io::Write>(&mut self, _: &mut W, value: u32) -> io::Result<()> {
        CompactFormatter.write_u32(self.out, value)
    }

    fn write_u64<W: ?Sized + io::Write>(&mut self, _: &mut W, value: u64) -> io::Result<()> {
        CompactFormatter.write_u64(self.out, value)
    }

    fn write_u128<W: ?Sized + io::Write>(&mut self, _: &mut W, value: u128) -> io::Result<()> {
        CompactFormatter.write_u128(self.out, value)
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, _: &mut W, value: f32) -> io::Result<()> {
        CompactFormatter.write_f32(self.out, value)
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, _: &mut W, value: f64) -> io::Result<()> {
        CompactFormatter.write_f64(self.out, value)
    }

    fn write_number_str<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        value: &str,
    ) -> io::Result<()> {
        CompactFormatter.write_number_str(self.out, value)
    }

    fn begin_string<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.begin_string(self.out)
    }

    fn end_string<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.end_string(self.out)
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if self.in_key {
            self.keys.extend_from_slice(fragment.as_bytes());
        }
        CompactFormatter.write_string_fragment(self.out, fragment)
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        if self.in_key {
            let byte = match escape {
                CharEscape::Quote => b'"',
                CharEscape::ReverseSolidus => b'\\',
                CharEscape::Solidus => b'/',
                CharEscape::Backspace => 0x08,
                CharEscape::FormFeed => 0x0c,
                CharEscape::LineFeed => b'\n',
                CharEscape::CarriageReturn => b'\r',
                CharEscape::Tab => b'\t',
                CharEscape::AsciiControl(byte) => byte,
            };
            self.keys.push(byte);
        }
        CompactFormatter.write_char_escape(self.out, escape)
    }

    fn write_byte_array<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        value: &[u8],
    ) -> io::Result<()> {
        CompactFormatter.write_byte_array(self.out, value)
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.begin_array(self.out)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.end_array(self.out)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        first: bool,
    ) -> io::Result<()> {
        CompactFormatter.begin_array_value(self.out, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.end_array_value(self.out)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.objects.push(Object {
            members: Vec::new(),
        });
        CompactFormatter.begin_object(self.out)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        let object = self.objects.pop().expect("an object ends after it began");
        self.sort(object);
        CompactFormatter.end_object(self.out)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        first: bool,
    ) -> io::Result<()> {
        CompactFormatter.begin_object_key(self.out, first)?;
        let (key, bytes) = (self.keys.len(), self.out.len());
        self.objects
            .last_mut()
            .expect("a key is inside an object")
            .members
            .push(Member {
                key: key..key,
                bytes: bytes..bytes,
            });
        self.in_key = true;
        Ok(())
    }

    fn end_object_key<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.in_key = false;
        let end = self.keys.len();
        self.member().key.end = end;
        Ok(())
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.begin_object_value(self.out)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        let end = self.out.len();
        self.member().bytes.end = end;
        Ok(())
    }

    fn write_raw_fragment<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        CompactFormatter.write_raw_fragment(self.out, fragment)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let value = json!({"b": {"z": 1, "a": [{"y": true, "x": null}]}, "a": "é\n"});
        assert_eq!(
            String::from_utf8(canonical_json(&value)).unwrap(),
            r#"{"a":"é\n","b":{"a":[{"x":null,"y":true}],"z":1}}"#
        );
    }

    /// Fields declared out of order, a nested map and escapes in keys: the same bytes as the
    /// value's sorted tree.
    #[test]
    fn a_struct_serializes_as_its_sorted_value_does() {
        #[derive(Serialize)]
        struct Inner {
            zeta: Vec<u8>,
            alpha: Option<f64>,
        }
        #[derive(Serialize)]
        struct Outer {
            name: &'static str,
            inner: Inner,
            map: BTreeMap<String, Inner>,
            #[serde(flatten)]
            extra: BTreeMap<String, Value>,
        }
        let outer = Outer {
            name: "x\"y",
            inner: Inner {
                zeta: vec![1, 2],
                alpha: Some(0.5),
            },
            map: [
                (
                    "b\"".to_string(),
                    Inner {
                        zeta: vec![],
                        alpha: None,
                    },
                ),
                (
                    "b#".to_string(),
                    Inner {
                        zeta: vec![3],
                        alpha: Some(-1e300),
                    },
                ),
                (
                    "a\u{1}".to_string(),
                    Inner {
                        zeta: vec![],
                        alpha: None,
                    },
                ),
            ]
            .into_iter()
            .collect(),
            extra: [("aardvark".to_string(), json!({"q": 1, "p": [2]}))]
                .into_iter()
                .collect(),
        };
        let through_value = sorted_tree(&serde_json::to_value(&outer).unwrap());
        assert_eq!(
            String::from_utf8(to_canonical_vec(&outer).unwrap()).unwrap(),
            String::from_utf8(through_value).unwrap()
        );
    }

    /// A reference: the value as a tree, its keys sorted as strings.
    fn sorted_tree(value: &Value) -> Vec<u8> {
        match value {
            Value::Object(object) => {
                let mut members: Vec<(&String, &Value)> = object.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = b"{".to_vec();
                for (index, (key, value)) in members.into_iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    out.extend(serde_json::to_vec(key).unwrap());
                    out.push(b':');
                    out.extend(sorted_tree(value));
                }
                out.push(b'}');
                out
            }
            Value::Array(items) => {
                let items: Vec<Vec<u8>> = items.iter().map(sorted_tree).collect();
                [b"[".to_vec(), items.join(&b","[..]), b"]".to_vec()].concat()
            }
            leaf => serde_json::to_vec(leaf).unwrap(),
        }
    }

    /// A JSON tree whose objects keep their members in the order generated, unsorted.
    #[derive(Debug, Clone)]
    enum Tree {
        Leaf(Value),
        Array(Vec<Tree>),
        Object(Vec<(String, Tree)>),
    }

    impl Serialize for Tree {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            match self {
                Tree::Leaf(value) => value.serialize(serializer),
                Tree::Array(items) => items.serialize(serializer),
                Tree::Object(members) => {
                    let mut map = serializer.serialize_map(Some(members.len()))?;
                    for (key, value) in members {
                        map.serialize_entry(key, value)?;
                    }
                    map.end()
                }
            }
        }
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,6}|[\u{0}-\u{1f}\"\\\\]{0,3}".prop_map(Value::from),
        ]
        .prop_map(Tree::Leaf);
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::Array),
                prop::collection::vec(("\\PC{0,4}|[\u{0}-\u{1f}\"\\\\#~]{0,3}", inner), 0..6)
                    .prop_map(|mut members| {
                        // One member per key, in the order generated.
                        let mut seen = std::collections::BTreeSet::new();
                        members.retain(|(key, _)| seen.insert(key.clone()));
                        Tree::Object(members)
                    }),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_tree_serializes_as_its_sorted_value(tree in tree()) {
            let value = serde_json::to_value(&tree).unwrap();
            prop_assert_eq!(to_canonical_vec(&tree).unwrap(), sorted_tree(&value));
            prop_assert_eq!(canonical_json(&value), sorted_tree(&value));
        }
    }
}
