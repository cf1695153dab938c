//! The kernels' tuning knobs in one table, read once at first use. Defaults are the choices the
//! code makes by measurement (see `benches/RESULTS.md`); each knob has one environment variable
//! that overrides it, documented in the README's "Tuning" section. A variable that is set but
//! does not parse is reported once on stderr, naming it, and ignored.

use std::sync::OnceLock;

/// `FEATURES_PER_WARP,WARPS` of a CUDA GEMV launch.
pub type GemvShape = (u32, u32);

/// Every knob; `None` where the default depends on the CPU, the device or the shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// `MOE_PREFETCH=nta|t0`: the CPU matrix-vector products' prefetch hint (default by vendor:
    /// non-temporal on AMD, `T0` with an extra L2 prefetch elsewhere).
    pub prefetch_non_temporal: Option<bool>,
    /// `MOE_TILE_BITS=256|512`: register width of the CPU bf16 pair tiles (default by CPU).
    pub tile_bits: Option<u32>,
    /// `MOE_BLAS_MIN_ROWS`: rows from which CUDA linears run on cuBLAS (0: never).
    pub blas_min_rows: usize,
    /// `MOE_BLAS_MIN_SLOTS`: routed rows from which CUDA experts run on cuBLAS (0: never).
    pub blas_min_slots: usize,
    /// `MOE_BLAS_MIN_EXPERT_ELEMS`: expert size (hidden × ffn) from which that applies.
    pub blas_min_expert_elems: usize,
    /// `MOE_BLAS_MIN_SLOTS_SMALL`: routed rows from which smaller experts go to cuBLAS too.
    pub blas_min_slots_small: usize,
    /// `MOE_W13_SPLIT_WARPS`, `MOE_W2_SPLIT_WARPS`: warps below which the CUDA expert GEMMs
    /// split their reduction dimension.
    pub w13_split_warps: usize,
    pub w2_split_warps: usize,
    /// `MOE_EXPERT_GEMV=0|1`: CUDA expert GEMV kernels off, or on for every 8-row tile
    /// (default: when there are no more routed rows than experts).
    pub expert_gemv: Option<bool>,
    /// `MOE_LINEAR_GEMV_MAX_ROWS`: most tokens a CUDA linear takes on the GEMV kernel.
    pub linear_gemv_max_rows: usize,
    /// `MOE_GEMV_SHAPE_W13`, `MOE_GEMV_SHAPE_W2`, `MOE_GEMV_SHAPE_LINEAR`: launch shapes
    /// (default: by the weight's bytes per element, 8 warps).
    pub gemv_shape_w13: Option<GemvShape>,
    pub gemv_shape_w2: Option<GemvShape>,
    pub gemv_shape_linear: Option<GemvShape>,
}

impl Tuning {
    /// The table from `var` (the environment in [`tuning`]); warnings for what did not parse.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> (Tuning, Vec<String>) {
        let mut warnings = vec![];
        let mut read = |name: &str, what: &str, parse: &dyn Fn(&str) -> bool| -> Option<String> {
            let v = var(name)?;
            if parse(v.trim()) {
                Some(v.trim().to_string())
            } else {
                warnings.push(format!("{name}={v:?} is not {what}; ignored"));
                None
            }
        };
        let is_count = |v: &str| v.parse::<usize>().is_ok();
        let is_shape = |v: &str| parse_shape(v).is_some();
        let count = |v: Option<String>, default: usize| v.map_or(default, |v| v.parse().unwrap());
        // 0 disables a cuBLAS path: no batch is that large.
        let threshold = |v: Option<String>, default: usize| match count(v, default) {
            0 => usize::MAX,
            n => n,
        };
        let t = Tuning {
            prefetch_non_temporal: read("MOE_PREFETCH", "nta or t0", &|v| {
                matches!(v, "nta" | "t0")
            })
            .map(|v| v == "nta"),
            tile_bits: read("MOE_TILE_BITS", "256 or 512", &|v| {
                matches!(v, "256" | "512")
            })
            .map(|v| v.parse().unwrap()),
            blas_min_rows: threshold(read("MOE_BLAS_MIN_ROWS", "a count", &is_count), 32),
            blas_min_slots: threshold(read("MOE_BLAS_MIN_SLOTS", "a count", &is_count), 16),
            blas_min_expert_elems: count(
                read("MOE_BLAS_MIN_EXPERT_ELEMS", "a count", &is_count),
                16 << 20,
            ),
            blas_min_slots_small: count(
                read("MOE_BLAS_MIN_SLOTS_SMALL", "a count", &is_count),
                1024,
            ),
            w13_split_warps: count(read("MOE_W13_SPLIT_WARPS", "a count", &is_count), 1024),
            w2_split_warps: count(read("MOE_W2_SPLIT_WARPS", "a count", &is_count), 8192),
            expert_gemv: read("MOE_EXPERT_GEMV", "0 or 1", &|v| matches!(v, "0" | "1"))
                .map(|v| v == "1"),
            linear_gemv_max_rows: count(read("MOE_LINEAR_GEMV_MAX_ROWS", "a count", &is_count), 4),
            gemv_shape_w13: read("MOE_GEMV_SHAPE_W13", SHAPE, &is_shape)
                .and_then(|v| parse_shape(&v)),
            gemv_shape_w2: read("MOE_GEMV_SHAPE_W2", SHAPE, &is_shape)
                .and_then(|v| parse_shape(&v)),
            gemv_shape_linear: read("MOE_GEMV_SHAPE_LINEAR", SHAPE, &is_shape)
                .and_then(|v| parse_shape(&v)),
        };
        for (old, new) in [
            ("MOE_LINEAR_GEMV", "MOE_LINEAR_GEMV_MAX_ROWS"),
            ("MOE_GEMV_LINEAR", "MOE_GEMV_SHAPE_LINEAR"),
            ("MOE_GEMV_W13", "MOE_GEMV_SHAPE_W13"),
            ("MOE_GEMV_W2", "MOE_GEMV_SHAPE_W2"),
        ] {
            if var(old).is_some() {
                warnings.push(format!("{old} is now {new}; ignored"));
            }
        }
        (t, warnings)
    }
}

const SHAPE: &str = "FEATURES_PER_WARP,WARPS (1, 2 or 4; 1 to 32)";

fn parse_shape(v: &str) -> Option<GemvShape> {
    let (a, b) = v.split_once(',')?;
    let shape: GemvShape = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (matches!(shape.0, 1 | 2 | 4) && (1..=32).contains(&shape.1)).then_some(shape)
}

/// The process's table, read from the environment at first use.
pub fn tuning() -> &'static Tuning {
    static TUNING: OnceLock<Tuning> = OnceLock::new();
    TUNING.get_or_init(|| {
        let (t, warnings) = Tuning::from_vars(|name| std::env::var(name).ok());
        for w in warnings {
            eprintln!("warning: {w}");
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> (Tuning, Vec<String>) {
        Tuning::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_overrides_and_named_warnings() {
        let (d, w) = with(&[]);
        assert!(w.is_empty());
        assert_eq!(
            (d.blas_min_rows, d.blas_min_slots, d.linear_gemv_max_rows),
            (32, 16, 4)
        );
        assert_eq!(
            (d.prefetch_non_temporal, d.expert_gemv, d.gemv_shape_w13),
            (None, None, None)
        );

        let (t, w) = with(&[
            ("MOE_PREFETCH", "t0"),
            ("MOE_BLAS_MIN_ROWS", "0"),
            ("MOE_GEMV_SHAPE_W2", "2, 16"),
            ("MOE_EXPERT_GEMV", "1"),
        ]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(t.prefetch_non_temporal, Some(false));
        assert_eq!(t.blas_min_rows, usize::MAX);
        assert_eq!(t.gemv_shape_w2, Some((2, 16)));
        assert_eq!(t.expert_gemv, Some(true));

        let (t, w) = with(&[
            ("MOE_TILE_BITS", "384"),
            ("MOE_GEMV_SHAPE_LINEAR", "3,8"),
            ("MOE_LINEAR_GEMV", "8"),
        ]);
        assert_eq!(t, d, "bad values leave the defaults");
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("MOE_TILE_BITS=\"384\" is not 256 or 512"));
        assert!(w[1].starts_with("MOE_GEMV_SHAPE_LINEAR=\"3,8\""));
        assert_eq!(
            w[2],
            "MOE_LINEAR_GEMV is now MOE_LINEAR_GEMV_MAX_ROWS; ignored"
        );
    }
}
