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
