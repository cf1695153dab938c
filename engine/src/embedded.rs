//! The default model compiled into the library: `moe-student-tiny` (Mixtral architecture, 5 M
//! parameters, bf16, two shards, the Mistral tokenizer, an `[INST]` chat template), so every
//! command works with no download.

/// Keeps included bytes aligned for in-place f32/bf16 reads.
#[repr(C, align(64))]
struct Aligned<B: ?Sized>(B);

macro_rules! student_file {
    ($name:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/moe-student-tiny/",
            $name
        )
    };
}

static SHARD_1: &Aligned<[u8]> = &Aligned(*include_bytes!(student_file!(
    "model-00001-of-00002.safetensors"
)));
static SHARD_2: &Aligned<[u8]> = &Aligned(*include_bytes!(student_file!(
    "model-00002-of-00002.safetensors"
)));

pub const NAME: &str = "moe-student-tiny";
pub const CONFIG_JSON: &str = include_str!(student_file!("config.json"));
pub const TOKENIZER_JSON: &[u8] = include_bytes!(student_file!("tokenizer.json"));
pub const TOKENIZER_CONFIG_JSON: &[u8] = include_bytes!(student_file!("tokenizer_config.json"));

/// `(file name, bytes)` of each safetensors shard.
pub fn shards() -> [(&'static str, &'static [u8]); 2] {
    [
        (
            "embedded:moe-student-tiny/model-00001-of-00002.safetensors",
            &SHARD_1.0,
        ),
        (
            "embedded:moe-student-tiny/model-00002-of-00002.safetensors",
            &SHARD_2.0,
        ),
    ]
}
