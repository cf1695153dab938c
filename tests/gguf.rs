//! GGUF reader and reference dequantizers against llama.cpp's files (`tests/fixtures/gguf-mixtral-a`,
//! a tiny random Mixtral converted and quantised by llama.cpp itself) and against `gguf_ref.py`'s
//! numpy dequantizers (`tests/fixtures/gguf-blocks/blocks.json`, `gguf-mixtral-a/expected.json`, made
//! by `tests/python/make_gguf_block_fixture.py`). Dequantization is compared bit for bit: gguf_ref
//! computes in ggml's float32 operation order, and so does `moe_kernels::quant`.

use std::path::PathBuf;

use moe::gguf::{Gguf, Value, ValueType};
use moe_kernels::quant::{dequantize_row, GgmlType};
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("gguf-mixtral-a")
}

fn read_json(p: PathBuf) -> Json {
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn fnv1a64(v: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in v {
        for b in x.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn check_against_meta(file: &str, type_key: &str) {
    let meta = read_json(model_dir().join("meta.json"));
    let g = Gguf::open(model_dir().join(file)).unwrap();
    let hdr = &meta["gguf_header"];
    assert_eq!(g.version() as u64, hdr["version"].as_u64().unwrap());
    assert_eq!(g.tensors().len() as u64, hdr["n_tensors"].as_u64().unwrap());
    assert_eq!(g.metadata().len() as u64, hdr["n_kv"].as_u64().unwrap());
    assert_eq!(g.alignment(), hdr["alignment"].as_u64().unwrap());
    assert_eq!(
        g.data_offset() as u64,
        hdr["data_section_offset"].as_u64().unwrap()
    );

    assert_eq!(g.str("general.architecture"), Some("llama"));
    assert_eq!(g.u32("llama.expert_count"), Some(4));
    assert_eq!(g.u32("llama.expert_used_count"), Some(2));
    assert_eq!(g.u32("llama.block_count"), Some(2));
    assert_eq!(g.f32("llama.rope.freq_base"), Some(1e6));
    assert_eq!(g.u32("missing.key"), None);
    assert_eq!(
        g.str("llama.block_count"),
        None,
        "typed helpers check the type"
    );
    let tf = meta["types"][type_key]["general_file_type"]
        .as_u64()
        .unwrap();
    assert_eq!(g.u64("general.file_type"), Some(tf));

    // Every metadata entry of meta.json (taken from the F16 file; file_type differs per file).
    let md = meta["gguf_metadata_F16"].as_object().unwrap();
    let mut seen = 0;
    for (key, want) in md {
        if key.starts_with("GGUF.") || key == "general.file_type" {
            continue;
        }
        seen += 1;
        let v = g
            .get(key)
            .unwrap_or_else(|| panic!("{file}: missing {key}"));
        let ty = want["type"].as_str().unwrap();
        if let Some(n) = want.get("array_len") {
            let items = v.as_array().unwrap();
            assert_eq!(items.len() as u64, n.as_u64().unwrap(), "{key}");
            let elem = match v {
                Value::Array { elem, .. } => *elem,
                _ => unreachable!(),
            };
            let want_elem = match ty {
                "STRING" => ValueType::String,
                "FLOAT32" => ValueType::F32,
                "INT32" => ValueType::I32,
                t => panic!("{t}"),
            };
            assert_eq!(elem, want_elem, "{key}");
            assert!(items.iter().all(|i| i.value_type() == want_elem));
            continue;
        }
        let w = &want["value"];
        match ty {
            "STRING" => assert_eq!(v, &Value::String(w.as_str().unwrap().into()), "{key}"),
            "UINT32" => assert_eq!(v, &Value::U32(w.as_u64().unwrap() as u32), "{key}"),
            "FLOAT32" => assert_eq!(v, &Value::F32(w.as_f64().unwrap() as f32), "{key}"),
            "BOOL" => assert_eq!(v, &Value::Bool(w.as_bool().unwrap()), "{key}"),
            t => panic!("{key}: type {t} not handled by this test"),
        }
    }
    assert_eq!(
        seen + 1,
        g.metadata().len(),
        "every key but general.file_type checked"
    );
    let tokens = g.array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens[0].as_str(), Some("<unk>"));
    assert_eq!(tokens[1].as_str(), Some("<s>"));

    // Tensor names, dims and per-tensor types.
    let shapes = meta["tensor_shapes_ne"].as_object().unwrap();
    let types = meta["types"][type_key]["tensors"].as_object().unwrap();
    assert_eq!(shapes.len(), g.tensors().len());
    for t in g.tensors() {
        let ne: Vec<u64> = shapes[&t.name]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, ne, "{}", t.name);
        let rev: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
        assert_eq!(t.shape(), rev);
        assert_eq!(
            t.ggml_type.name(),
            types[&t.name].as_str().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(
            g.tensor_data(t).len(),
            t.ggml_type.bytes_for(t.n_elements()).unwrap()
        );
        assert_eq!(g.tensor(&t.name), Some(t));
    }
    let e = g.tensor("blk.0.ffn_gate_exps.weight").unwrap();
    assert_eq!(e.shape(), [4, 512, 256], "experts are [E][out][in]");
    assert_eq!(g.tensor("output.weight").unwrap().shape(), [512, 256]);
}

#[test]
fn q8_0_header_and_metadata() {
    check_against_meta("gguf-mixtral-a.Q8_0.gguf", "Q8_0");
}

#[test]
fn q4_k_m_header_and_metadata() {
    check_against_meta("gguf-mixtral-a.Q4_K_M.gguf", "Q4_K_M");
}

/// Every tensor of both files, dequantized, against gguf_ref.py: FNV-1a of all f32 bit patterns
/// (exact), the first 64 values (exact) and the sum (1e-9 relative, numpy sums pairwise).
#[test]
fn dequantize_every_tensor_matches_gguf_ref() {
    let exp = read_json(model_dir().join("expected.json"));
    let files = exp["files"].as_object().unwrap();
    assert_eq!(files.len(), 2);
    for (file, per) in files {
        let g = Gguf::open(model_dir().join(file)).unwrap();
        let per = per.as_object().unwrap();
        assert_eq!(per.len(), g.tensors().len());
        for t in g.tensors() {
            let want = &per[&t.name];
            assert_eq!(t.ggml_type.name(), want["type"].as_str().unwrap());
            let v = g.dequantize(t).unwrap();
            let first: Vec<u32> = v[..64].iter().map(|x| x.to_bits()).collect();
            let want_first: Vec<u32> = want["first_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(first, want_first, "{file} {}: first values", t.name);
            assert_eq!(
                format!("{:016x}", fnv1a64(&v)),
                want["fnv1a64"].as_str().unwrap(),
                "{file} {}: hash of all values",
                t.name
            );
            let sum: f64 = v.iter().map(|&x| x as f64).sum();
            let ws = want["sum"].as_f64().unwrap();
            assert!(
                (sum - ws).abs() <= 1e-9 * (1.0 + ws.abs()),
                "{file} {}: {sum} vs {ws}",
                t.name
            );
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Raw blocks of every quantised type in llama.cpp's files against gguf_ref.py, bit for bit.
#[test]
fn block_fixtures_match_gguf_ref() {
    let j = read_json(fixtures().join("gguf-blocks/blocks.json"));
    let types = j["types"].as_object().unwrap();
    let want_types = [
        "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
        "IQ4_NL", "IQ4_XS",
    ];
    for name in want_types {
        let f = &types[name];
        let t = moe_kernels::quant::ALL_TYPES
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap();
        let bytes = unhex(f["hex"].as_str().unwrap());
        let n = f["values"].as_u64().unwrap() as usize;
        let mut out = vec![0f32; n];
        dequantize_row(t, &bytes, &mut out).unwrap();
        let want: Vec<u32> = f["expected_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                *b,
                "{name} value {i}: {a} vs {}",
                f32::from_bits(*b)
            );
        }
        // Length mismatches are errors, not panics.
        assert!(dequantize_row(t, &bytes[..bytes.len() - 1], &mut out).is_err());
        assert!(dequantize_row(t, &bytes, &mut out[..n - 1]).is_err());
    }
    assert_eq!(types.len(), want_types.len());
}

// ---------------------------------------------------------------------------------------------
// Malformed files
// ---------------------------------------------------------------------------------------------

fn q8_bytes() -> Vec<u8> {
    std::fs::read(model_dir().join("gguf-mixtral-a.Q8_0.gguf")).unwrap()
}

#[track_caller]
fn err_of(bytes: Vec<u8>) -> String {
    match Gguf::from_bytes("bad.gguf", bytes) {
        Ok(_) => panic!("a malformed file was accepted"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_err(bytes: Vec<u8>, needle: &str) {
    let m = err_of(bytes);
    assert!(m.contains(needle), "expected `{needle}` in: {m}");
    assert!(m.starts_with("bad.gguf: "), "{m}");
}

/// Offset of tensor info `name` in the header: (offset of n_dims, n_dims).
fn tensor_info_at(b: &[u8], name: &str) -> (usize, usize) {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend(name.as_bytes());
    let p = b
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap()
        + pat.len();
    (
        p,
        u32::from_le_bytes(b[p..p + 4].try_into().unwrap()) as usize,
    )
}

#[test]
fn truncated_files_are_named_errors() {
    let b = q8_bytes();
    let len = b.len();
    for cut in [
        0,
        1,
        3,
        4,
        7,
        8,
        16,
        23,
        24,
        30,
        40,
        100,
        1000,
        5000,
        13000,
        13535,
        13536,
        13600,
        len / 2,
        len - 1,
    ] {
        let m = err_of(b[..cut].to_vec());
        assert!(
            m.contains("truncated") || m.contains("out of range"),
            "cut at {cut}: {m}"
        );
    }
    // Cut inside the data section: the message names the tensor that no longer fits.
    let m = err_of(b[..len - 1].to_vec());
    assert!(m.contains("tensor `") && m.contains("out of range"), "{m}");
    let m = err_of(b[..30].to_vec());
    assert!(
        m.contains("the key of metadata entry 0") || m.contains("truncated"),
        "{m}"
    );
}

#[test]
fn corrupted_headers_are_named_errors() {
    let b = q8_bytes();
    let with = |at: usize, v: &[u8]| {
        let mut c = b.clone();
        c[at..at + v.len()].copy_from_slice(v);
        c
    };
    assert_err(with(0, b"GGUG"), "bad magic");
    assert_err(with(4, &1u32.to_le_bytes()), "unsupported GGUF version 1");
    assert_err(with(4, &4u32.to_le_bytes()), "unsupported GGUF version 4");
    assert_err(with(4, &3u32.to_be_bytes()), "big-endian");
    assert!(Gguf::from_bytes("v2.gguf", with(4, &2u32.to_le_bytes())).is_ok());
    assert_err(
        with(8, &u64::MAX.to_le_bytes()),
        "the tensor count is 18446744073709551615",
    );
    assert_err(
        with(16, &(1u64 << 40).to_le_bytes()),
        "the metadata KV count",
    );
    // The first key's string length.
    assert_err(
        with(24, &(1u64 << 50).to_le_bytes()),
        "past the end of the file",
    );
    assert_err(
        with(24, &u64::MAX.to_le_bytes()),
        "past the end of the file",
    );
    // The first key is general.architecture; its value type follows the key.
    let vt = 24 + 8 + "general.architecture".len();
    assert_eq!(&b[32..vt], b"general.architecture");
    assert_err(with(vt, &13u32.to_le_bytes()), "unknown value type 13");
    // Its string value's length.
    assert_err(
        with(vt + 4, &(b.len() as u64).to_le_bytes()),
        "past the end of the file",
    );
    // Invalid UTF-8 in a key.
    assert_err(with(32, &[0xFF]), "not valid UTF-8");

    let (p, nd) = tensor_info_at(&b, "output.weight");
    let ty = p + 4 + 8 * nd;
    let off = ty + 4;
    assert_err(with(p, &5u32.to_le_bytes()), "has 5 dimensions");
    assert_err(with(ty, &99u32.to_le_bytes()), "unknown ggml type 99");
    assert_err(
        with(ty, &16u32.to_le_bytes()),
        "ggml type 16 (IQ2_XXS), which is not supported",
    );
    // Another valid type of a different size moves the ranges: Q4_0 is smaller, F32 larger.
    assert_err(with(ty, &0u32.to_le_bytes()), "overlap");
    let cur = u64::from_le_bytes(b[off..off + 8].try_into().unwrap());
    assert_err(
        with(off, &(cur + 1).to_le_bytes()),
        "not a multiple of the alignment 32",
    );
    assert_err(with(off, &(1u64 << 40).to_le_bytes()), "out of range");
    assert_err(with(off, &(u64::MAX - 31).to_le_bytes()), "out of range");
    // A row that is not whole blocks.
    assert_err(
        with(p + 4, &100u64.to_le_bytes()),
        "not a multiple of the block size 32",
    );
    // Dims whose product overflows.
    assert_err(with(p + 4, &(1u64 << 62).to_le_bytes()), "overflow");
    // Two tensors at the same offset.
    let (p2, nd2) = tensor_info_at(&b, "token_embd.weight");
    let off2 = p2 + 4 + 8 * nd2 + 4;
    assert_err(with(off2, &cur.to_le_bytes()), "overlap");
}

// ---------------------------------------------------------------------------------------------
// A small GGUF built here: every value type, duplicates, and a fuzz over it
// ---------------------------------------------------------------------------------------------

fn s(out: &mut Vec<u8>, x: &str) {
    out.extend((x.len() as u64).to_le_bytes());
    out.extend(x.as_bytes());
}

struct Built {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Built {
    fn small() -> Built {
        let mut nested = Vec::new();
        nested.extend(0u32.to_le_bytes()); // element type u8
        nested.extend(2u64.to_le_bytes());
        nested.extend([7u8, 8]);
        let mut arr_of_arr = 9u32.to_le_bytes().to_vec();
        arr_of_arr.extend(2u64.to_le_bytes());
        arr_of_arr.extend(&nested);
        arr_of_arr.extend(&nested);
        let mut strs = 8u32.to_le_bytes().to_vec();
        strs.extend(2u64.to_le_bytes());
        s(&mut strs, "a");
        s(&mut strs, "bé");
        let mut ints = 5u32.to_le_bytes().to_vec();
        ints.extend(3u64.to_le_bytes());
        for v in [-1i32, 0, 7] {
            ints.extend(v.to_le_bytes());
        }
        let mut arch = Vec::new();
        s(&mut arch, "llama");
        let kv = vec![
            ("general.architecture".into(), 8, arch),
            ("u8".into(), 0, vec![200]),
            ("i8".into(), 1, vec![0xFE]),
            ("u16".into(), 2, 60000u16.to_le_bytes().to_vec()),
            ("i16".into(), 3, (-300i16).to_le_bytes().to_vec()),
            ("u32".into(), 4, 4_000_000_000u32.to_le_bytes().to_vec()),
            ("i32".into(), 5, (-5i32).to_le_bytes().to_vec()),
            ("f32".into(), 6, 1.5f32.to_le_bytes().to_vec()),
            ("bool".into(), 7, vec![1]),
            ("u64".into(), 10, (1u64 << 40).to_le_bytes().to_vec()),
            ("i64".into(), 11, (-7i64).to_le_bytes().to_vec()),
            ("f64".into(), 12, 2.25f64.to_le_bytes().to_vec()),
            ("strs".into(), 9, strs),
            ("ints".into(), 9, ints),
            ("nested".into(), 9, arr_of_arr),
            ("general.alignment".into(), 4, 64u32.to_le_bytes().to_vec()),
        ];
        let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let mut q8 = Vec::new();
        for blk in 0..2 {
            q8.extend(
                half::f16::from_f32(0.5 * (blk + 1) as f32)
                    .to_bits()
                    .to_le_bytes(),
            );
            q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        }
        let q4k: Vec<u8> = (0..144).map(|i| (i * 37 % 251) as u8).collect();
        let tensors = vec![
            ("a".into(), vec![4, 2], 0, f32s),
            ("b".into(), vec![32, 2], 8, q8),
            ("c".into(), vec![256], 12, q4k),
        ];
        Built { kv, tensors }
    }

    fn bytes(&self) -> Vec<u8> {
        let align = 64u64;
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, t, v) in &self.kv {
            s(&mut out, k);
            out.extend(t.to_le_bytes());
            out.extend(v);
        }
        let mut off = 0u64;
        let mut offs = Vec::new();
        for (name, dims, t, data) in &self.tensors {
            s(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.to_le_bytes());
            out.extend(off.to_le_bytes());
            offs.push(off);
            off = (off + data.len() as u64).div_ceil(align) * align;
        }
        while !(out.len() as u64).is_multiple_of(align) {
            out.push(0);
        }
        let start = out.len();
        for ((_, _, _, data), o) in self.tensors.iter().zip(offs) {
            out.resize(start + o as usize, 0);
            out.extend(data);
        }
        out
    }
}

#[test]
fn every_value_type_round_trips() {
    let g = Gguf::from_bytes("small.gguf", Built::small().bytes()).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.get("u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("i8"), Some(&Value::I8(-2)));
    assert_eq!(g.get("u16"), Some(&Value::U16(60000)));
    assert_eq!(g.get("i16"), Some(&Value::I16(-300)));
    assert_eq!(g.u32("u32"), Some(4_000_000_000));
    assert_eq!(g.get("i32"), Some(&Value::I32(-5)));
    assert_eq!(g.u32("i32"), None);
    assert_eq!(g.f32("f32"), Some(1.5));
    assert_eq!(g.bool("bool"), Some(true));
    assert_eq!(g.u64("u64"), Some(1 << 40));
    assert_eq!(g.u32("u64"), None, "does not fit");
    assert_eq!(g.get("i64"), Some(&Value::I64(-7)));
    assert_eq!(g.get("f64"), Some(&Value::F64(2.25)));
    assert_eq!(g.u32("u8"), Some(200));
    let strs: Vec<&str> = g
        .array("strs")
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(strs, ["a", "bé"]);
    assert_eq!(g.array("ints").unwrap()[0], Value::I32(-1));
    let nested = g.get("nested").unwrap();
    let Value::Array { elem, items } = nested else {
        panic!()
    };
    assert_eq!(*elem, ValueType::Array);
    assert_eq!(
        items[1],
        Value::Array {
            elem: ValueType::U8,
            items: vec![Value::U8(7), Value::U8(8)]
        }
    );

    let a = g.tensor("a").unwrap();
    assert_eq!((a.shape(), a.ggml_type), (vec![2, 4], GgmlType::F32));
    assert_eq!(
        g.dequantize(a).unwrap(),
        (0..8).map(|i| i as f32).collect::<Vec<_>>()
    );
    let b = g.dequantize(g.tensor("b").unwrap()).unwrap();
    assert_eq!((b[0], b[63]), (-8.0, 15.0));
    assert_eq!(g.tensor("c").unwrap().offset % 64, 0);
    assert_eq!(g.dequantize(g.tensor("c").unwrap()).unwrap().len(), 256);
}

#[test]
fn built_file_errors() {
    let mut b = Built::small();
    b.tensors[2].0 = "a".into();
    assert_err(b.bytes(), "duplicate tensor name `a`");
    let mut b = Built::small();
    b.kv[2].0 = "u8".into();
    assert_err(b.bytes(), "duplicate metadata key `u8`");
    let mut b = Built::small();
    b.kv[8].2 = vec![2];
    assert_err(b.bytes(), "bool of value 2");
    let mut b = Built::small();
    b.kv[15].2 = 48u32.to_le_bytes().to_vec();
    assert_err(b.bytes(), "power of two");
    let mut b = Built::small();
    b.kv[13].2[0] = 77; // array element type
    assert_err(b.bytes(), "unknown array element type 77");
    let mut b = Built::small();
    b.kv[13].2[4..12].copy_from_slice(&(1u64 << 60).to_le_bytes()); // array count
    assert_err(b.bytes(), "element count of metadata `ints`");
    // Deeply nested arrays are refused, not a stack overflow.
    let mut deep = Vec::new();
    for _ in 0..100 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(0u32.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    let mut b = Built::small();
    b.kv[14] = ("deep".into(), 9, deep);
    assert_err(b.bytes(), "nests arrays more than");
    // A file with metadata only, no padding.
    let mut b = Built::small();
    b.tensors.clear();
    let mut bytes = b.bytes();
    let g = Gguf::from_bytes("x", bytes.clone()).unwrap();
    assert!(g.tensors().is_empty());
    bytes.truncate(bytes.len() - 1);
    let _ = Gguf::from_bytes("x", bytes);
}

/// Deterministic fuzz: random byte edits, u64 field overwrites and truncations of the small file;
/// every one must give Ok or Err (and, when Ok, dequantize without panicking).
#[test]
fn fuzz_mutations_never_panic() {
    let base = Built::small().bytes();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..10_000 {
        let mut b = base.clone();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            let at = (next() % b.len() as u64) as usize;
            match next() % 4 {
                0 => b[at] ^= 1 << (next() % 8),
                1 => b[at] = next() as u8,
                2 => {
                    let v = match next() % 3 {
                        0 => next(),
                        1 => next() % 300,
                        _ => u64::MAX - next() % 4,
                    };
                    for (i, byte) in v.to_le_bytes().iter().enumerate() {
                        if at + i < b.len() {
                            b[at + i] = *byte;
                        }
                    }
                }
                _ => b.truncate(at),
            }
            if b.is_empty() {
                break;
            }
        }
        match Gguf::from_bytes("fuzz.gguf", b) {
            Ok(g) => {
                ok += 1;
                for t in g.tensors() {
                    let _ = g.dequantize(t);
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().contains("GGUF"), "{e}");
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
}
