//! A structural pass over an Avro datum, before apache-avro decodes it: every length, block
//! count, union branch and enum index must fit the bytes that are really there, and nesting
//! stays shallow.
//!
//! apache-avro reserves room for a whole array or map block from the count the datum claims, so
//! 53 bytes claiming a map of billions of entries aborted the process on allocation (found by
//! the `avro_readers` fuzz target). Events and observations come from any producer: a reader
//! (`vigil alerts`, `vigil tail`) must refuse such a record, not die on it at every restart.

use std::collections::HashMap;

use apache_avro::schema::{
    ArraySchema, DecimalSchema, MapSchema, Name, Namespace, RecordSchema, ResolvedSchema, Schema,
};

/// Deepest nesting of records, arrays, maps and unions accepted (recursive schemas could
/// otherwise nest until the stack ends).
const MAX_DEPTH: usize = 64;
/// Most items accepted in blocks of zero-byte items (e.g. an array of nulls).
const MAX_EMPTY_ITEMS: u64 = 1 << 16;

/// Checks that `datum` can be decoded with `schema` without any claim outgrowing the datum.
pub fn check(schema: &Schema, datum: &[u8]) -> Result<(), String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let mut w = Walker {
        names: resolved.get_names(),
        rest: datum,
    };
    w.value(schema, &None, 0)
}

struct Walker<'a, 's> {
    names: &'a HashMap<Name, &'s Schema>,
    rest: &'a [u8],
}

impl Walker<'_, '_> {
    fn take(&mut self, n: u64, what: &str) -> Result<(), String> {
        if n > self.rest.len() as u64 {
            return Err(format!(
                "{what} claims {n} bytes, {} are left",
                self.rest.len()
            ));
        }
        self.rest = &self.rest[n as usize..];
        Ok(())
    }

    /// A zig-zag varint long.
    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self
                .rest
                .split_first()
                .ok_or("the datum ends inside a number")?;
            self.rest = rest;
            v |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn len(&mut self, what: &str) -> Result<u64, String> {
        let n = self.long()?;
        u64::try_from(n).map_err(|_| format!("{what} has a negative length {n}"))
    }

    /// Whether every value of `schema` takes at least one byte.
    fn sized(&self, schema: &Schema, depth: usize) -> bool {
        match schema {
            Schema::Null => false,
            Schema::Record(RecordSchema { fields, .. }) => {
                depth < MAX_DEPTH && fields.iter().any(|f| self.sized(&f.schema, depth + 1))
            }
            Schema::Fixed(f) => f.size > 0,
            Schema::Ref { name } => self
                .names
                .get(name)
                .is_some_and(|s| depth < MAX_DEPTH && self.sized(s, depth + 1)),
            _ => true,
        }
    }

    /// Array and map blocks: counts bounded by the bytes left.
    fn blocks(
        &mut self,
        item: &Schema,
        map: bool,
        ns: &Namespace,
        depth: usize,
    ) -> Result<(), String> {
        let sized = map || self.sized(item, 0);
        let mut total: u64 = 0;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.len("a block")?;
            }
            let count = count.unsigned_abs();
            total = total.saturating_add(count);
            let fits = if sized {
                total <= self.rest.len() as u64
            } else {
                total <= MAX_EMPTY_ITEMS
            };
            if !fits {
                return Err(format!(
                    "a block claims {count} items, more than the {} bytes left can hold",
                    self.rest.len()
                ));
            }
            for _ in 0..count {
                if map {
                    let n = self.len("a map key")?;
                    self.take(n, "a map key")?;
                }
                self.value(item, ns, depth + 1)?;
            }
        }
    }

    fn value(&mut self, schema: &Schema, ns: &Namespace, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.take(1, "a boolean"),
            Schema::Float => self.take(4, "a float"),
            Schema::Double => self.take(8, "a double"),
            Schema::Duration => self.take(12, "a duration"),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => {
                let n = self.len("a string")?;
                self.take(n, "a string")
            }
            Schema::Fixed(f) => self.take(f.size as u64, "a fixed"),
            Schema::Decimal(DecimalSchema { inner, .. }) => self.value(inner, ns, depth + 1),
            Schema::Enum(e) => {
                let i = self.long()?;
                if usize::try_from(i).is_ok_and(|i| i < e.symbols.len()) {
                    Ok(())
                } else {
                    Err(format!("enum index {i} of {} symbols", e.symbols.len()))
                }
            }
            Schema::Union(u) => {
                let i = self.long()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union branch {i} of {}", u.variants().len()))?;
                self.value(branch, ns, depth + 1)
            }
            Schema::Array(ArraySchema { items, .. }) => self.blocks(items, false, ns, depth),
            Schema::Map(MapSchema { types, .. }) => self.blocks(types, true, ns, depth),
            Schema::Record(RecordSchema { name, fields, .. }) => {
                let inner = name.fully_qualified_name(ns).namespace;
                for f in fields {
                    self.value(&f.schema, &inner, depth + 1)?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(ns);
                let target = *self
                    .names
                    .get(&full)
                    .ok_or_else(|| format!("unknown type {}", full.fullname(None)))?;
                self.value(target, &full.namespace, depth + 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_claiming_more_entries_than_bytes_is_refused() {
        let schema = Schema::parse_str(r#"{"type": "map", "values": "float"}"#).unwrap();
        // count 1,000,000,000 (zig-zag varint), then nothing.
        let mut datum = Vec::new();
        let mut v = 2_000_000_000u64;
        while v >= 0x80 {
            datum.push((v as u8) | 0x80);
            v >>= 7;
        }
        datum.push(v as u8);
        let err = check(&schema, &datum).unwrap_err();
        assert!(err.contains("claims 1000000000 items"), "{err}");
        // One real entry: key "a", 1.0f32, end of blocks.
        let ok = [2, 2, b'a', 0, 0, 0x80, 0x3F, 0];
        assert!(check(&schema, &ok).is_ok());
    }

    #[test]
    fn lengths_unions_and_enums_must_fit() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "r", "fields": [
                {"name": "s", "type": "string"},
                {"name": "u", "type": ["null", "long"]},
                {"name": "e", "type": {"type": "enum", "name": "k", "symbols": ["a", "b"]}}]}"#,
        )
        .unwrap();
        assert!(check(&schema, &[2, b'x', 2, 4, 2]).is_ok());
        assert!(
            check(&schema, &[40, b'x']).is_err(),
            "string longer than the datum"
        );
        assert!(
            check(&schema, &[2, b'x', 6, 4, 2]).is_err(),
            "union branch 3 of 2"
        );
        assert!(
            check(&schema, &[2, b'x', 0, 4]).is_err(),
            "enum index 2 of 2"
        );
        assert!(check(&schema, &[2, b'x', 0]).is_err(), "ends early");
    }
}
