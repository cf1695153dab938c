//! The tokenizer against the reference ids (SentencePiece-checked), decoding back to the text,
//! streaming detokenisation, and chat templates against the trained pair's golden prompts.

use moe::tokenizer::{ChatMessage, Tokenizer};
use moe::Error;
use moe_tests::{fixture, repo_path};

/// The reference README's table for the Mistral v1 tokenizer.
const MISTRAL_IDS: &[(&str, &[u32])] = &[
    ("Hello world", &[1, 22557, 1526]),
    (
        "The quick brown fox jumps over the lazy dog.",
        &[
            1, 415, 2936, 9060, 285, 1142, 461, 10575, 754, 272, 17898, 3914, 28723,
        ],
    ),
    (" leading space", &[1, 28705, 5374, 2764]),
    (
        "  two  spaces\tand\ttabs\nnewline\n\n",
        &[
            1, 259, 989, 28705, 10599, 12, 391, 12, 24856, 13, 1095, 1081, 13, 13,
        ],
    ),
    (
        "def f(x):\n    return x**2\n",
        &[
            1, 801, 285, 28732, 28744, 1329, 13, 2287, 604, 1318, 348, 28750, 13,
        ],
    ),
    (
        "Ünïcödé 日本語 🙂 مرحبا Привет",
        &[
            1, 13156, 28711, 28920, 28717, 14697, 28797, 28705, 29142, 29119, 30321, 28705, 29340,
            28080, 28947, 29100, 28983, 28915, 11824, 8496,
        ],
    ),
    (
        "1234567890 3.14159",
        &[
            1, 28705, 28740, 28750, 28770, 28781, 28782, 28784, 28787, 28783, 28774, 28734, 28705,
            28770, 28723, 28740, 28781, 28740, 28782, 28774,
        ],
    ),
    (
        "[INST] What is 2+2? [/INST]",
        &[
            1, 733, 16289, 28793, 1824, 349, 28705, 28750, 28806, 28750, 28804, 733, 28748, 16289,
            28793,
        ],
    ),
    ("", &[1]),
    (
        "Mixtral routes tokens to experts.",
        &[1, 19630, 434, 282, 16425, 16246, 298, 11725, 28723],
    ),
    ("café\t🦀", &[1, 28345, 12, 243, 162, 169, 131]),
];

fn mistral() -> Tokenizer {
    Tokenizer::from_dir(&fixture("mixtral-tiny-f32")).unwrap()
}

#[test]
fn mistral_ids_and_round_trip() {
    let t = mistral();
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
    for (text, ids) in MISTRAL_IDS {
        assert_eq!(t.encode(text, true).unwrap(), *ids, "{text:?}");
        assert_eq!(t.decode(ids, true).unwrap(), *text, "{text:?}");
    }
}

#[test]
fn small_bpe_ids_and_round_trip() {
    let t = Tokenizer::from_dir(&fixture("mixtral-small-f32")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("mixtral-small-f32").join("meta.json")).unwrap(),
    )
    .unwrap();
    let examples = meta["tokenizer"]["check"]["examples"].as_array().unwrap();
    assert!(examples.len() >= 9);
    for ex in examples {
        let text = ex["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(ex["ids"].clone()).unwrap();
        assert_eq!(t.encode(text, true).unwrap(), ids, "{text:?}");
        assert_eq!(
            t.decode(&ids, true).unwrap(),
            ex["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn streaming_deltas_concatenate_to_the_full_decode() {
    let t = mistral();
    for (text, ids) in MISTRAL_IDS {
        let generated = &ids[1..];
        let mut d = t.incremental_decoder(&ids[..1]);
        let mut s = String::new();
        for &id in generated {
            let delta = d.push(id).unwrap();
            assert!(
                !delta.contains('\u{FFFD}'),
                "{text:?}: partial character released"
            );
            s += &delta;
        }
        s += &d.flush().unwrap();
        assert_eq!(s, t.decode(generated, true).unwrap(), "{text:?}");
    }
}

#[derive(serde::Deserialize)]
struct Gen {
    question: String,
    prompt: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    text: String,
}

#[test]
fn chat_template_renders_and_tokenises_like_transformers() {
    for model in ["moe-student-tiny", "moe-teacher-tiny"] {
        let dir = repo_path(&format!("models/{model}"));
        let t = Tokenizer::from_dir(&dir).unwrap();
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("golden_generations.json")).unwrap(),
        )
        .unwrap();
        let gens: Vec<Gen> = serde_json::from_value(v["generations"].clone()).unwrap();
        for g in gens {
            let msgs = [ChatMessage::user(g.question.clone())];
            assert_eq!(t.apply_chat_template(&msgs, true).unwrap(), g.prompt);
            assert_eq!(
                t.encode_chat(&msgs, true).unwrap(),
                g.prompt_ids,
                "{model}: {:?}",
                g.question
            );
            assert_eq!(t.decode(&g.generated_ids, true).unwrap(), g.text);
        }
        let conv = [
            ChatMessage::user("a"),
            ChatMessage::assistant("b"),
            ChatMessage::user("c"),
        ];
        assert_eq!(
            t.apply_chat_template(&conv, true).unwrap(),
            "<s>[INST] a [/INST] b</s>[INST] c [/INST]"
        );
        let bad = [ChatMessage::assistant("x")];
        match t.apply_chat_template(&bad, true) {
            Err(Error::ChatTemplate(m)) => {
                assert!(m.contains("Conversation roles must alternate"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn missing_template_and_broken_files_are_errors() {
    let t = mistral();
    assert!(
        matches!(t.apply_chat_template(&[ChatMessage::user("x")], true), Err(Error::ChatTemplate(m)) if m.contains("no chat_template"))
    );
    assert!(matches!(
        Tokenizer::from_bytes(b"{ not json", None),
        Err(Error::Tokenizer(_))
    ));
    let json = std::fs::read(fixture("mixtral-tiny-f32").join("tokenizer.json")).unwrap();
    assert!(matches!(
        Tokenizer::from_bytes(&json, Some(b"[1, 2")),
        Err(Error::Tokenizer(_))
    ));
}

// ---- MoE family fixtures (tests/fixtures/FAMILIES.md, Tokenizers) ----

fn meta(model: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(model).join("meta.json")).unwrap())
        .unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Every `tokenizer.check.examples` entry: the ids, and the text back (these texts are NFC and
/// the decoders add nothing, so decoding without skipping special tokens gives the text itself).
fn check_examples(model: &str, t: &Tokenizer) {
    let examples = meta(model)["tokenizer"]["check"]["examples"]
        .as_array()
        .unwrap()
        .clone();
    assert!(examples.len() >= 9, "{model}");
    for ex in &examples {
        let text = ex["text"].as_str().unwrap();
        let ids = ids_of(&ex["ids"]);
        assert_eq!(t.encode(text, true).unwrap(), ids, "{model}: {text:?}");
        assert_eq!(t.encode(text, false).unwrap(), ids, "{model}: {text:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), text, "{model}: {text:?}");
        let tokens: Vec<String> = serde_json::from_value(ex["tokens"].clone()).unwrap();
        let got: Vec<String> = ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect();
        assert_eq!(got, tokens, "{model}: {text:?}");
    }
}

#[test]
fn qwen_style_tokenizer_ids_special_tokens_and_round_trip() {
    for model in [
        "qwen2_moe-tiny-f32",
        "qwen3_moe-tiny-f32",
        "qwen3_moe-tiny-bf16",
    ] {
        let t = Tokenizer::from_dir(&fixture(model)).unwrap();
        assert_eq!(t.vocab_size(), 603, "{model}");
        assert_eq!((t.bos_id(), t.eos_id()), (None, Some(602)), "{model}");
        assert_eq!(t.encode("Hello world", true).unwrap(), [370, 444]);
        assert_eq!(
            t.encode("The quick brown fox jumps over the lazy dog.", true)
                .unwrap(),
            [
                344, 417, 289, 74, 290, 400, 405, 279, 395, 414, 353, 310, 439, 264, 272, 506, 88,
                315, 70, 13
            ]
        );
        check_examples(model, &t);
        // Special tokens written in the text are matched as special tokens, and skipped by a
        // decode that skips special tokens.
        let chat = [601, 331, 257, 198, 39, 72, 602, 198];
        assert_eq!(
            t.encode("<|im_start|>user\nHi<|im_end|>\n", false).unwrap(),
            chat
        );
        assert_eq!(t.decode(&chat, true).unwrap(), "user\nHi\n");
        assert_eq!(
            t.encode("a<|endoftext|>b", false).unwrap(),
            [
                t.encode("a", false).unwrap(),
                vec![600],
                t.encode("b", false).unwrap()
            ]
            .concat()
        );
        for (id, s) in [
            (600, "<|endoftext|>"),
            (601, "<|im_start|>"),
            (602, "<|im_end|>"),
        ] {
            assert_eq!(t.token_to_id(s), Some(id));
        }
        // NFC normaliser: a decomposed accent encodes as the composed one.
        assert_eq!(
            t.encode("cafe\u{301}", false).unwrap(),
            t.encode("caf\u{e9}", false).unwrap()
        );
    }
}

#[test]
fn neox_style_tokenizer_ids_and_round_trip() {
    let model = "olmoe-tiny-f32";
    let t = Tokenizer::from_dir(&fixture(model)).unwrap();
    assert_eq!(t.vocab_size(), 510);
    assert_eq!((t.bos_id(), t.eos_id()), (None, Some(0)));
    assert_eq!(t.encode("Hello world", true).unwrap(), [369, 447]);
    check_examples(model, &t);
    // ChatML markers are plain text to this tokenizer; its own specials are matched.
    assert_eq!(
        t.encode("Hello<|endoftext|>", false).unwrap(),
        [t.encode("Hello", false).unwrap(), vec![0]].concat()
    );
    assert_eq!(t.decode(&[369, 447, 0, 1], true).unwrap(), "Hello world");
}

/// config `vocab_size` pads the tokenizer's vocabulary (640 > 603, 512 > 510): ids past the
/// tokenizer are skipped by decoding and by the streaming decoder, never a panic; the generated
/// text in meta.json (which skips them) is reproduced.
#[test]
fn padded_vocabulary_ids_are_skipped_when_decoding() {
    for (model, vocab) in [
        ("qwen2_moe-tiny-f32", 640u32),
        ("qwen3_moe-tiny-f32", 640),
        ("olmoe-tiny-f32", 512),
    ] {
        let t = Tokenizer::from_dir(&fixture(model)).unwrap();
        let hello = t.encode("Hello world", false).unwrap();
        let padded: Vec<u32> = (t.vocab_size() as u32..vocab).collect();
        assert!(!padded.is_empty());
        for &p in &padded {
            assert_eq!(t.id_to_token(p), None, "{model}: {p}");
            let ids = [vec![p, hello[0], p], hello[1..].to_vec(), vec![p]].concat();
            assert_eq!(t.decode(&ids, true).unwrap(), "Hello world", "{model}: {p}");
            assert_eq!(
                t.decode(&ids, false).unwrap(),
                "Hello world",
                "{model}: {p}"
            );
        }
        let m = meta(model);
        for case in ["p0", "p1"] {
            let gens = m["cases"][case]["generated_ids"].as_array().unwrap();
            let texts = m["cases"][case]["generated_text"].as_array().unwrap();
            let prompts = m["cases"][case]["input_ids"].as_array().unwrap();
            for ((g, text), prompt) in gens.iter().zip(texts).zip(prompts) {
                let g = ids_of(g);
                assert_eq!(
                    t.decode(&g, true).unwrap(),
                    text.as_str().unwrap(),
                    "{model} {case}"
                );
                let mut d = t.incremental_decoder(&ids_of(prompt));
                let mut s = String::new();
                for &id in &g {
                    s += &d.push(id).unwrap();
                }
                s += &d.flush().unwrap();
                assert_eq!(s, text.as_str().unwrap(), "{model} {case}: streamed");
                assert_eq!(d.generated_ids(), g);
            }
        }
    }
}

/// The ChatML template of the Qwen folders renders meta.json's p0 prompt and its ids; OLMoE's
/// folder has no template, which is a named error.
#[test]
fn chatml_template_of_the_qwen_fixtures() {
    for model in ["qwen2_moe-tiny-f32", "qwen3_moe-tiny-f32"] {
        let t = Tokenizer::from_dir(&fixture(model)).unwrap();
        let m = meta(model);
        let text = m["cases"]["p0"]["texts"][0].as_str().unwrap();
        let question = text
            .strip_prefix("<|im_start|>user\n")
            .and_then(|s| s.strip_suffix("<|im_end|>\n<|im_start|>assistant\n"))
            .unwrap();
        let msgs = [ChatMessage::user(question)];
        assert_eq!(t.apply_chat_template(&msgs, true).unwrap(), text);
        assert_eq!(
            t.encode_chat(&msgs, true).unwrap(),
            ids_of(&m["cases"]["p0"]["input_ids"][0])
        );
        assert_eq!(
            t.encode_chat(&[ChatMessage::user("Hi")], true).unwrap(),
            [601, 331, 257, 198, 39, 72, 602, 198, 601, 460, 387, 571, 83, 198]
        );
        let conv = [
            ChatMessage::system("s"),
            ChatMessage::user("a"),
            ChatMessage::assistant("b"),
        ];
        assert_eq!(
            t.apply_chat_template(&conv, false).unwrap(),
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
        );
    }
    let t = Tokenizer::from_dir(&fixture("olmoe-tiny-f32")).unwrap();
    assert!(!t.has_chat_template());
    assert!(matches!(
        t.apply_chat_template(&[ChatMessage::user("x")], true),
        Err(Error::ChatTemplate(m)) if m.contains("no chat_template")
    ));
}

// ---- Hostile tokenizer.json files (edited copies of the small fixture) ----

fn small_json() -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(fixture("mixtral-small-f32").join("tokenizer.json")).unwrap(),
    )
    .unwrap()
}

fn from_json(v: &serde_json::Value) -> Result<Tokenizer, Error> {
    Tokenizer::from_bytes(v.to_string().as_bytes(), None)
}

#[track_caller]
fn tokenizer_err(v: &serde_json::Value, needle: &str) {
    match from_json(v) {
        Ok(t) => panic!("accepted; encodes to {:?}", t.encode("Hello world", true)),
        Err(e) => {
            let m = e.to_string();
            assert!(matches!(e, Error::Tokenizer(_)), "{m}");
            assert!(m.contains(needle), "expected `{needle}` in: {m}");
        }
    }
}

/// A post-processor naming a special token that is not defined (the `tokenizers` crate panics
/// at the first encode with such a file), or one past the vocabulary, is refused at load.
#[test]
fn post_processor_special_tokens_must_exist() {
    let mut v = small_json();
    v["post_processor"]["single"][0]["SpecialToken"]["id"] = "<nope>".into();
    tokenizer_err(
        &v,
        "the `single` template names special token `<nope>`, which `special_tokens` does not define",
    );
    let mut v = small_json();
    v["post_processor"]["pair"][2]["SpecialToken"]["id"] = "[SEP]".into();
    tokenizer_err(&v, "the `pair` template names special token `[SEP]`");
    let mut v = small_json();
    v["post_processor"]["special_tokens"]["<s>"]["ids"] = serde_json::json!([100000]);
    tokenizer_err(
        &v,
        "special token `<s>` has id 100000, outside the vocabulary (size 512)",
    );
    let mut v = small_json();
    v["post_processor"]["special_tokens"]["<s>"]["ids"] = serde_json::json!([1, 1]);
    tokenizer_err(&v, "special token `<s>` has 2 ids and 1 tokens");
    let mut v = small_json();
    v["post_processor"]["special_tokens"]["<s>"]["tokens"] = serde_json::json!(["<zz>"]);
    tokenizer_err(&v, "adds token `<zz>`, which is not in the vocabulary");
    // Inside a Sequence too.
    let mut v = small_json();
    let mut inner = v["post_processor"].clone();
    inner["single"][0]["SpecialToken"]["id"] = "<nope>".into();
    v["post_processor"] = serde_json::json!({"type": "Sequence", "processors": [inner]});
    tokenizer_err(&v, "special token `<nope>`");
    let mut v = small_json();
    v["post_processor"] =
        serde_json::json!({"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 70000]});
    tokenizer_err(
        &v,
        "BertProcessing's `cls` token has id 70000, outside the vocabulary",
    );
    // The unedited file loads and adds `<s>`.
    let t = from_json(&small_json()).unwrap();
    assert_eq!(t.encode("Hello", true).unwrap()[0], 1);
}

/// `padding` and `truncation` in tokenizer.json are training-batch settings: the engine's encodes
/// ignore them (padding to a fixed 10^9 would allocate gigabytes per prompt; truncation would cut
/// every prompt to its first token).
#[test]
fn padding_and_truncation_in_tokenizer_json_do_not_apply() {
    let text = "The quick brown fox jumps over the lazy dog.";
    let want = from_json(&small_json())
        .unwrap()
        .encode(text, true)
        .unwrap();
    assert!(want.len() > 5, "{want:?}");
    let mut v = small_json();
    v["padding"] = serde_json::json!({
        "strategy": {"Fixed": 1_000_000_000u64}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"
    });
    let t = from_json(&v).unwrap();
    assert_eq!(t.encode(text, true).unwrap(), want);
    let mut v = small_json();
    v["truncation"] = serde_json::json!({
        "direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0
    });
    let t = from_json(&v).unwrap();
    assert_eq!(t.encode(text, true).unwrap(), want);
    assert_eq!(t.encode(text, false).unwrap(), want[1..]);
}

// ---- Hostile chat templates ----

#[track_caller]
fn template_limit(template: &str) {
    let t = Tokenizer::from_dir(&fixture("mixtral-small-f32"))
        .unwrap()
        .with_chat_template(template.into());
    let t0 = std::time::Instant::now();
    match t.apply_chat_template(&[ChatMessage::user("hi")], true) {
        Ok(s) => panic!("rendered {} bytes", s.len()),
        Err(e) => {
            let m = e.to_string();
            assert!(
                m.contains("chat template exceeded its evaluation limit"),
                "{m}"
            );
        }
    }
    eprintln!("stopped after {:?}", t0.elapsed());
}

/// A template that would run 10^8 loop iterations, or write a gigabyte, stops at the limit with
/// a named error instead of running for minutes or exhausting memory.
#[test]
fn runaway_chat_templates_stop_at_the_evaluation_limit() {
    template_limit(
        "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
    );
    template_limit("{% for i in range(100000) %}{% for m in messages %}{{ m.content }}{% endfor %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    // Few instructions, much output: 100 × 10 MB.
    template_limit("{% for i in range(100) %}{{ 'x' * 10000000 }}{% endfor %}");
}

/// The limit leaves room for long real conversations: 20 000 turns through the Qwen fixtures'
/// ChatML template (with its per-message loops) render in full.
#[test]
fn long_conversations_render_within_the_limit() {
    let t = Tokenizer::from_dir(&fixture("qwen3_moe-tiny-f32")).unwrap();
    let messages: Vec<ChatMessage> = (0..20_000)
        .map(|i| {
            if i % 2 == 0 {
                ChatMessage::user(format!("question {i}"))
            } else {
                ChatMessage::assistant(format!("answer {i}"))
            }
        })
        .collect();
    let text = t.apply_chat_template(&messages, true).unwrap();
    assert!(text.contains("question 19998") && text.contains("answer 19999"));
}

/// Found by tests/fuzz.rs: a BPE `continuing_subword_prefix` longer than a merge's second token
/// panicked inside `tokenizers` at load; a template raising an empty message gave an empty error.
#[test]
fn fuzz_findings_are_named_errors() {
    let mut v = small_json();
    v["model"]["continuing_subword_prefix"] = "@@@@@@@@@@@@@@@@".into();
    tokenizer_err(
        &v,
        "does not start with continuing_subword_prefix `@@@@@@@@@@@@@@@@`",
    );
    let t = from_json(&small_json())
        .unwrap()
        .with_chat_template("{{ raise_exception('') }}".into());
    let e = t
        .apply_chat_template(&[ChatMessage::user("x")], true)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "chat template: the chat template raised an error with no message"
    );
}
