//! Broken checkpoints, configs and inputs: each is a named error, never a panic.

use moe::backend::CpuBackend;
use moe::models::{Model, SeqStep};
use moe::trace::NoTrace;
use moe::weights::Weights;
use moe::{Error, ModelConfig};
use moe_tests::{fixture, read_raw_tensors, scratch_model_dir, write_safetensors, RawTensor};
use std::path::Path;

const MODEL: &str = "mixtral-tiny-f32";

fn load_dir(dir: &Path) -> Result<Model<CpuBackend>, Error> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let w = Weights::open_dir(dir)?;
    Model::load(cfg, &w, CpuBackend, &mut |_, _| {})
}

fn write_with(tag: &str, edit: impl FnOnce(&mut Vec<RawTensor>)) -> std::path::PathBuf {
    let dir = scratch_model_dir(MODEL, tag);
    let mut t = read_raw_tensors(MODEL);
    edit(&mut t);
    write_safetensors(&dir.join("model.safetensors"), &t);
    dir
}

fn err_text(r: Result<Model<CpuBackend>, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_file_names_the_file_and_a_tensor() {
    let dir = scratch_model_dir(MODEL, "trunc");
    let bytes = std::fs::read(fixture(MODEL).join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(load_dir(&dir));
    assert!(
        e.contains("model.safetensors") && e.contains("outside") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(dir.join("model.safetensors"), &bytes[..4]).unwrap();
    let e = err_text(load_dir(&dir));
    assert!(e.contains("too short"), "{e}");
    std::fs::write(dir.join("model.safetensors"), &bytes[..100]).unwrap();
    let e = err_text(load_dir(&dir));
    assert!(
        e.contains("header length") && e.contains("past the end"),
        "{e}"
    );
}

#[test]
fn offsets_past_the_end_are_named() {
    let dir = write_with("past", |t| {
        let n = t[0].data.len() as u64;
        t[0].offsets = Some([1 << 40, (1 << 40) + n]);
    });
    let e = err_text(load_dir(&dir));
    assert!(e.contains("data_offsets") && e.contains("outside"), "{e}");
}

#[test]
fn overlapping_tensors_are_named() {
    let dir = write_with("overlap", |t| {
        let n = t[1].data.len() as u64;
        t[1].offsets = Some([0, n]);
    });
    let e = err_text(load_dir(&dir));
    assert!(e.contains("overlap"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = write_with("missing", |t| {
        t.retain(|x| x.name != "model.layers.1.block_sparse_moe.experts.3.w2.weight")
    });
    let e = err_text(load_dir(&dir));
    assert!(
        e.contains("`model.layers.1.block_sparse_moe.experts.3.w2.weight` is missing"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let dir = write_with("shape", |t| {
        let x = t
            .iter_mut()
            .find(|x| x.name == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        x.shape = vec![64, 32];
    });
    let e = err_text(load_dir(&dir));
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("[32, 64]")
            && e.contains("[64, 32]"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = write_with("dtype", |t| {
        let x = t
            .iter_mut()
            .find(|x| x.name == "model.norm.weight")
            .unwrap();
        x.dtype = "I32".into();
    });
    let e = err_text(load_dir(&dir));
    assert!(
        e.contains("model.norm.weight") && e.contains("I32") && e.contains("not supported"),
        "{e}"
    );
}

#[test]
fn size_not_matching_dtype_and_shape_is_named() {
    let dir = write_with("size", |t| {
        let x = t
            .iter_mut()
            .find(|x| x.name == "model.norm.weight")
            .unwrap();
        x.dtype = "F64".into();
    });
    let e = err_text(load_dir(&dir));
    assert!(
        e.contains("model.norm.weight") && e.contains("bytes of data for dtype F64"),
        "{e}"
    );
}

#[test]
fn inconsistent_configs_are_rejected() {
    let text = std::fs::read_to_string(fixture(MODEL).join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["num_experts_per_tok"] = 9.into();
    let e = ModelConfig::from_json(&v.to_string())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("num_experts_per_tok (9) is larger than num_local_experts (8)"),
        "{e}"
    );
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["num_key_value_heads"] = 3.into();
    let e = ModelConfig::from_json(&v.to_string())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("num_attention_heads (4) is not a multiple of num_key_value_heads (3)"),
        "{e}"
    );
    let e = ModelConfig::from_json("{ not json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid config.json"), "{e}");
}

#[test]
fn prompt_past_the_context_and_empty_prompt_are_errors() {
    let m = load_dir(&fixture(MODEL)).unwrap();
    let long = vec![5u32; m.cfg.max_position_embeddings + 1];
    let mut kv = m.new_kv();
    let e = m
        .forward(
            &mut [SeqStep {
                tokens: &long,
                kv: &mut kv,
                all_logits: false,
            }],
            &mut NoTrace,
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::ContextOverflow { len: 513, max: 512 }),
        "{e}"
    );
    let e = m
        .forward(
            &mut [SeqStep {
                tokens: &[],
                kv: &mut kv,
                all_logits: false,
            }],
            &mut NoTrace,
        )
        .unwrap_err();
    assert!(matches!(e, Error::EmptyPrompt), "{e}");
    let e = m
        .forward(
            &mut [SeqStep {
                tokens: &[32000],
                kv: &mut kv,
                all_logits: false,
            }],
            &mut NoTrace,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("token id 32000 is outside the vocabulary"),
        "{e}"
    );
}

// ---- Model families ----

fn family_config(
    model: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<ModelConfig, Error> {
    let text = std::fs::read_to_string(fixture(model).join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    ModelConfig::from_json(&v.to_string())
}

#[test]
fn unsupported_model_type_lists_the_supported_families() {
    let e = family_config("qwen3_moe-tiny-f32", |v| v["model_type"] = "mamba".into())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mamba") && e.contains("mixtral, qwen2_moe, qwen3_moe, olmoe"),
        "{e}"
    );
    // Without model_type, an unknown architecture is named the same way.
    let e = family_config("olmoe-tiny-f32", |v| {
        v.as_object_mut().unwrap().remove("model_type");
        v["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("MambaForCausalLM") && e.contains("mixtral, qwen2_moe, qwen3_moe, olmoe"),
        "{e}"
    );
    // And through a model directory, as every front end loads one.
    let dir = scratch_model_dir("olmoe-tiny-f32", "mamba");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    v["model_type"] = "mamba".into();
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = ModelConfig::from_file(&dir.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mixtral, qwen2_moe, qwen3_moe, olmoe"), "{e}");
}

#[test]
fn qwen3_moe_sliding_window_is_a_named_error() {
    let e = family_config("qwen3_moe-tiny-f32", |v| {
        v["use_sliding_window"] = true.into();
        v["sliding_window"] = 4096.into();
    })
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("use_sliding_window") && e.contains("qwen3_moe"),
        "{e}"
    );
    // Published with `use_sliding_window: false`, `sliding_window` is ignored.
    let c = family_config("qwen3_moe-tiny-f32", |v| v["sliding_window"] = 4096.into()).unwrap();
    assert_eq!(c.sliding_window, None);
}

#[test]
fn qwen2_moe_missing_shared_expert_gate_is_named() {
    let model = "qwen2_moe-tiny-f32";
    let name = "model.layers.0.mlp.shared_expert_gate.weight";
    let dir = scratch_model_dir(model, "no-shared-gate");
    let mut t = read_raw_tensors(model);
    let before = t.len();
    t.retain(|x| x.name != name);
    assert_eq!(t.len(), before - 1);
    write_safetensors(&dir.join("model.safetensors"), &t);
    let e = err_text(load_dir(&dir));
    assert!(e.contains(&format!("`{name}` is missing")), "{e}");
    // The intact checkpoint loads.
    let dir = scratch_model_dir(model, "intact");
    write_safetensors(&dir.join("model.safetensors"), &read_raw_tensors(model));
    load_dir(&dir).unwrap();
}

/// A config whose counts disagree with the checkpoint, or that would size buffers past any
/// checkpoint, or whose floats are not finite in f32, is a named error before anything runs.
#[test]
fn configs_disagreeing_with_their_tensors_are_named_errors() {
    let edit = |tag: &str, key: &str, value: serde_json::Value| {
        let dir = scratch_model_dir(MODEL, tag);
        std::fs::copy(
            fixture(MODEL).join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        let path = dir.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(&path, v.to_string()).unwrap();
        dir
    };
    // One layer fewer than the checkpoint holds: not a silent one-layer model.
    let e = err_text(load_dir(&edit(
        "fewer-layers",
        "num_hidden_layers",
        1.into(),
    )));
    assert!(
        e.contains("model.layers.1.")
            && e.contains("num_hidden_layers 1")
            && e.contains("disagree"),
        "{e}"
    );
    // Fewer experts than stored: the router's shape says so first.
    let e = err_text(load_dir(&edit(
        "fewer-experts",
        "num_local_experts",
        4.into(),
    )));
    assert!(e.contains("gate.weight") && e.contains("[4, 64]"), "{e}");
    // Counts past any checkpoint fail before a buffer is sized from them.
    for (tag, key, v) in [
        ("huge-layers", "num_hidden_layers", 1_000_000_000_000u64),
        ("huge-layers-2", "num_hidden_layers", 1 << 60),
        ("huge-experts", "num_local_experts", 1 << 40),
    ] {
        let e = err_text(load_dir(&edit(tag, key, v.into())));
        assert!(
            e.contains(key) && e.contains("more than any checkpoint"),
            "{e}"
        );
    }
    // 1e300 is infinite in f32.
    let e = err_text(load_dir(&edit("eps", "rms_norm_eps", 1e300.into())));
    assert!(e.contains("rms_norm_eps") && e.contains("finite"), "{e}");
}

// ---- Files that are not regular files, and indexes pointing elsewhere ----

/// A scratch copy of the small fixture with its weights (config, tokenizer and checkpoint).
fn small_copy(tag: &str) -> std::path::PathBuf {
    let dir = scratch_model_dir("mixtral-small-f32", tag);
    std::fs::copy(
        fixture("mixtral-small-f32").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    dir
}

fn engine_err(source: moe::ModelSource) -> String {
    match moe::Engine::load(&source) {
        Ok(_) => panic!("expected an error loading {source:?}"),
        Err(e) => e.to_string(),
    }
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// Each file the loader reads, replaced by a FIFO (with no writer: an `open` of it would block
/// forever) or by a directory, is refused by name before it is opened.
#[test]
fn fifos_and_directories_named_like_model_files_are_named_errors() {
    for name in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
    ] {
        let dir = small_copy(&format!("fifo-{name}"));
        mkfifo(&dir.join(name));
        let e = engine_err(moe::ModelSource::Dir(dir.clone()));
        assert!(
            e.contains(name) && e.contains("is a FIFO, not a regular file"),
            "{name}: {e}"
        );
    }
    let dir = small_copy("dir-shard");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::create_dir(dir.join("model.safetensors")).unwrap();
    let e = engine_err(moe::ModelSource::Dir(dir.clone()));
    assert!(
        e.contains("model.safetensors") && e.contains("is a directory, not a regular file"),
        "{e}"
    );
    // A symlink to a FIFO is judged by what it points at.
    let dir = small_copy("fifo-link");
    mkfifo(&dir.join("elsewhere"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("elsewhere", dir.join("model.safetensors")).unwrap();
    let e = engine_err(moe::ModelSource::Dir(dir.clone()));
    assert!(e.contains("is a FIFO"), "{e}");
    // A GGUF path.
    let gguf = dir.join("fifo.gguf");
    mkfifo(&gguf);
    let e = engine_err(moe::ModelSource::Gguf(gguf));
    assert!(e.contains("fifo.gguf") && e.contains("is a FIFO"), "{e}");
}

fn write_index(dir: &Path, entries: &[(&str, serde_json::Value)]) {
    let mut map = serde_json::Map::new();
    for t in read_raw_tensors("mixtral-small-f32") {
        map.insert(t.name, "model.safetensors".into());
    }
    for (name, file) in entries {
        map.insert(name.to_string(), file.clone());
    }
    let v = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), v.to_string()).unwrap();
}

/// `weight_map` names a shard outside the directory: refused before that file is opened, with
/// a message naming the index and the tensor and nothing of the file pointed at.
#[test]
fn index_entries_outside_the_model_directory_are_refused() {
    let dir = small_copy("index-escape");
    // A readable file outside the directory whose text must not reach the message.
    let outside = dir.parent().unwrap().join(format!(
        "moe-test-{}-secret.safetensors",
        std::process::id()
    ));
    std::fs::write(&outside, b"SECRET-CONTENT not a checkpoint").unwrap();
    let absolute = outside.display().to_string();
    let dotdot = format!("../{}", outside.file_name().unwrap().to_str().unwrap());
    for entry in [
        absolute.as_str(),
        dotdot.as_str(),
        "sub/../../x.safetensors",
        "",
    ] {
        write_index(&dir, &[("model.norm.weight", entry.into())]);
        let e = engine_err(moe::ModelSource::Dir(dir.clone()));
        assert!(
            e.contains("model.safetensors.index.json")
                && e.contains(
                    "weight_map entry for `model.norm.weight` points outside the model directory"
                ),
            "{entry:?}: {e}"
        );
        assert!(!e.contains("SECRET"), "{e}");
    }
    write_index(&dir, &[("model.norm.weight", 7.into())]);
    let e = engine_err(moe::ModelSource::Dir(dir.clone()));
    assert!(
        e.contains("weight_map entry for `model.norm.weight` is not a file name"),
        "{e}"
    );
    // An entry inside the directory is one more name of the same shard.
    write_index(&dir, &[("model.norm.weight", "./model.safetensors".into())]);
    moe::Engine::load(&moe::ModelSource::Dir(dir.clone())).unwrap();
    write_index(&dir, &[("model.norm.weight", "other.safetensors".into())]);
    let e = engine_err(moe::ModelSource::Dir(dir.clone()));
    assert!(e.contains("other.safetensors"), "{e}");
    std::fs::remove_file(&outside).unwrap();
}

/// Shards that are symlinks out of the directory (the Hugging Face cache's layout:
/// `snapshots/<rev>/model.safetensors -> ../../blobs/<hash>`) still load: the directory's owner
/// placed them, unlike a name inside the index.
#[test]
fn symlinked_shards_in_the_hugging_face_cache_layout_load() {
    let root = scratch_model_dir("mixtral-small-f32", "hf-cache");
    let blobs = root.join("blobs");
    let snap = root.join("snapshots").join("rev");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture("mixtral-small-f32").join(f), blobs.join(f)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{f}"), snap.join(f)).unwrap();
    }
    write_index(&snap, &[]);
    let e = moe::Engine::load(&moe::ModelSource::Dir(snap)).unwrap();
    assert_eq!(e.config().num_hidden_layers, 4);
}

// ---- Checkpoints that change on disk after load ----

/// With `no_mmap` the weights live in private memory: the checkpoint truncated to nothing (and
/// then deleted) after load changes nothing, and generation still matches transformers' goldens.
#[test]
fn no_mmap_weights_survive_the_checkpoint_being_truncated() {
    let dir = small_copy("no-mmap");
    let opts = moe::LoadOptions {
        no_mmap: true,
        ..Default::default()
    };
    let e =
        moe::Engine::load_with(&moe::ModelSource::Dir(dir.clone()), moe::CpuBackend, opts).unwrap();
    let shard = dir.join("model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(0)
        .unwrap();
    moe_tests::check_greedy_generation(&e, "mixtral-small-f32", "generated_ids", true);
    std::fs::remove_file(&shard).unwrap();
    moe_tests::check_greedy_generation(&e, "mixtral-small-f32", "generated_ids", true);
}

/// A GGUF file read with `no_mmap` gives exactly what the mapped file gives (tensor data at the
/// same alignment), and survives the file being truncated after load.
#[test]
fn no_mmap_gguf_matches_the_mapped_file() {
    let src = fixture("gguf-mixtral-a").join("gguf-mixtral-a.Q4_K_M.gguf");
    let copy = std::env::temp_dir().join(format!("moe-test-{}-no-mmap.gguf", std::process::id()));
    std::fs::copy(&src, &copy).unwrap();
    let generate = |e: &moe::Engine| {
        let req = moe::GenerateRequest::new(
            moe::Prompt::Tokens(vec![1, 391, 442, 373, 274]),
            moe_tests::greedy_16(),
        );
        let c = e.generate(&[req]).unwrap().remove(0);
        let lps: Vec<f32> = c.logprobs.unwrap().iter().map(|l| l.logprob).collect();
        (c.token_ids, lps)
    };
    let want = generate(&moe::Engine::load(&moe::ModelSource::Gguf(src)).unwrap());
    let opts = moe::LoadOptions {
        no_mmap: true,
        ..Default::default()
    };
    let e = moe::Engine::load_with(&moe::ModelSource::Gguf(copy.clone()), moe::CpuBackend, opts)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(generate(&e), want);
    std::fs::remove_file(&copy).unwrap();
}
