//! Distillation shards in the uncompressed row format DistillKit reads (`{input_ids, token_ids,
//! top_values}`; its decompressor passes such rows through unchanged), as parquet and as JSONL.
//!
//! Parquet schema (the standard three-level LIST layout that pyarrow and HF `datasets` read):
//! `input_ids: list<int64>`, `token_ids: list<list<int64>>`, `top_values: list<list<float32>>`.
//! Ids are int64 because DistillKit gathers with them and torch indexes with int64 only; values
//! are raw log-probabilities. One shard is one file with one row group, written whole through a
//! temporary name, so a shard on disk is always complete.

use super::distill::DistillRow;
use crate::error::{Error, Result};
use parquet::data_type::{FloatType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

const SCHEMA: &str = "
message distill {
  REQUIRED group input_ids (LIST) {
    REPEATED group list { REQUIRED INT64 element; }
  }
  REQUIRED group token_ids (LIST) {
    REPEATED group list {
      REQUIRED group element (LIST) { REPEATED group list { REQUIRED INT64 element; } }
    }
  }
  REQUIRED group top_values (LIST) {
    REPEATED group list {
      REQUIRED group element (LIST) { REPEATED group list { REQUIRED FLOAT element; } }
    }
  }
}";

/// Values with their definition and repetition levels for one column.
struct Column<T> {
    values: Vec<T>,
    def: Vec<i16>,
    rep: Vec<i16>,
}

impl<T: Copy> Column<T> {
    fn new() -> Self {
        Column {
            values: vec![],
            def: vec![],
            rep: vec![],
        }
    }

    /// A `list<T>` row: an empty list is one level pair with no value.
    fn push_list(&mut self, row: &[T]) {
        if row.is_empty() {
            self.def.push(0);
            self.rep.push(0);
        }
        for (i, v) in row.iter().enumerate() {
            self.values.push(*v);
            self.def.push(1);
            self.rep.push(if i == 0 { 0 } else { 1 });
        }
    }

    /// A `list<list<T>>` row. Levels: 0 = empty outer list, 1 = empty inner list, 2 = a value;
    /// repetition 0 starts the row, 1 a new inner list, 2 the next value of the same inner list.
    fn push_nested(&mut self, row: &[Vec<T>]) {
        if row.is_empty() {
            self.def.push(0);
            self.rep.push(0);
        }
        for (i, inner) in row.iter().enumerate() {
            let first_rep = if i == 0 { 0 } else { 1 };
            if inner.is_empty() {
                self.def.push(1);
                self.rep.push(first_rep);
            }
            for (j, v) in inner.iter().enumerate() {
                self.values.push(*v);
                self.def.push(2);
                self.rep.push(if j == 0 { first_rep } else { 2 });
            }
        }
    }
}

fn pq_err(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

/// Writes `tmp` then renames it to `path`, so a shard on disk is never partly written.
fn write_atomically(path: &Path, write: impl FnOnce(std::fs::File) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write(file)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// One parquet shard of `rows`.
pub fn write_parquet(path: &Path, rows: &[DistillRow]) -> Result<()> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(|e| pq_err(path, e))?);
    // Uncompressed and without dictionaries: the crate is built without codecs, and float
    // log-probabilities gain nothing from a dictionary. The writer name is fixed so identical
    // runs give identical bytes.
    let props = Arc::new(
        WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_created_by(format!("moe {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let (mut ids, mut tok, mut val) = (Column::new(), Column::new(), Column::new());
    for r in rows {
        let input: Vec<i64> = r.input_ids.iter().map(|&x| x as i64).collect();
        ids.push_list(&input);
        let t: Vec<Vec<i64>> = r
            .token_ids
            .iter()
            .map(|v| v.iter().map(|&x| x as i64).collect())
            .collect();
        tok.push_nested(&t);
        val.push_nested(&r.top_values);
    }
    write_atomically(path, |file| {
        let mut w = SerializedFileWriter::new(file, schema, props).map_err(|e| pq_err(path, e))?;
        let mut rg = w.next_row_group().map_err(|e| pq_err(path, e))?;
        let mut index = 0;
        while let Some(mut col) = rg.next_column().map_err(|e| pq_err(path, e))? {
            let written = match index {
                0 => col.typed::<Int64Type>().write_batch(
                    &ids.values,
                    Some(&ids.def),
                    Some(&ids.rep),
                ),
                1 => col.typed::<Int64Type>().write_batch(
                    &tok.values,
                    Some(&tok.def),
                    Some(&tok.rep),
                ),
                _ => col.typed::<FloatType>().write_batch(
                    &val.values,
                    Some(&val.def),
                    Some(&val.rep),
                ),
            };
            written.map_err(|e| pq_err(path, e))?;
            col.close().map_err(|e| pq_err(path, e))?;
            index += 1;
        }
        rg.close().map_err(|e| pq_err(path, e))?;
        w.close().map_err(|e| pq_err(path, e))?;
        Ok(())
    })
}

/// One JSONL shard of `rows` (with the actual tokens' logprobs and ranks, which the parquet
/// shards leave out to stay in DistillKit's row format).
pub fn write_jsonl(path: &Path, rows: &[DistillRow]) -> Result<()> {
    write_atomically(path, |file| {
        let mut w = std::io::BufWriter::new(file);
        for r in rows {
            let line = serde_json::to_string(r).map_err(|e| Error::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            writeln!(w, "{line}").map_err(|e| Error::io(path, e))?;
        }
        w.flush().map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_of_nested_lists() {
        let mut c = Column::new();
        c.push_nested(&[vec![1, 2], vec![], vec![3]]);
        c.push_nested(&[]);
        c.push_nested(&[vec![4]]);
        assert_eq!(c.values, [1, 2, 3, 4]);
        assert_eq!(c.def, [2, 2, 1, 2, 0, 2]);
        assert_eq!(c.rep, [0, 2, 1, 1, 0, 0]);
        let mut l = Column::new();
        l.push_list(&[5, 6]);
        l.push_list(&[]);
        assert_eq!((l.def, l.rep), (vec![1, 1, 0], vec![0, 1, 0]));
    }
}
