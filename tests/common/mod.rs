//! Shared helpers for the integration tests: fixture paths, golden files, and element-wise
//! comparison that names the worst element.

use half::bf16;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A golden tensor, widened: floats to f32, ints to i64.
pub struct Golden {
    bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct GTensor {
    pub shape: Vec<usize>,
    pub f: Vec<f32>,
    pub i: Vec<i64>,
}

impl Golden {
    pub fn load(model: &str) -> Golden {
        let path = fixture(model).join("golden.safetensors");
        Golden {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.bytes).unwrap().tensor(key).is_ok()
    }

    pub fn get(&self, key: &str) -> GTensor {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("golden key {key} missing"));
        let data = t.data();
        let (f, i) = match t.dtype() {
            Dtype::F32 => (data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![]),
            Dtype::BF16 => (
                data.chunks(2).map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
                vec![],
            ),
            Dtype::I64 => (vec![], data.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
            d => panic!("unexpected golden dtype {d:?}"),
        };
        GTensor { shape: t.shape().to_vec(), f, i }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub abs: f32,
    pub rel: f32,
}

/// Summary of a comparison: worst element and relative L2 error.
#[derive(Debug)]
pub struct Closeness {
    pub max_abs: f32,
    pub rel_l2: f64,
}

/// Every element within `abs + rel·|want|`; on failure names the worst element (index, got, want).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: Tol) -> Closeness {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let mut worst = (0usize, 0f32);
    let mut max_abs = 0f32;
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        let excess = d - (tol.abs + tol.rel * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
        max_abs = max_abs.max(d);
        num += (d as f64).powi(2);
        den += (w as f64).powi(2);
    }
    let rel_l2 = (num / den.max(1e-30)).sqrt();
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} got {} want {} (|diff| {}, tolerance abs {} + rel {}); max |diff| {max_abs}, rel L2 {rel_l2:.3e}",
            got[i],
            want[i],
            (got[i] - want[i]).abs(),
            tol.abs,
            tol.rel
        );
    }
    Closeness { max_abs, rel_l2 }
}
