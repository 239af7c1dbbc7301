//! Generation: the key/value-cached decoder against the full forward (the CPU reference), and greedy decoding
//! against transformers + PEFT `generate` (tests/fixtures/golden/generation.json, from
//! `gen_fixtures.py gen-generation`, and golden/generation-families.json from `gen-families` for the families added
//! later): the same tokens, exactly, with all prompts in one left-padded batch.

mod common;

use candle_core::{DType, Device};
use common::max_diff;
use serde_json::Value;
use trainer::data::batch::{Batch, Example};
use trainer::generate::{generate, GenOptions};
use trainer::lora::Adapter;
use trainer::model::KvCache;
use trainer::session::Session;

fn open(name: &str) -> (Session, Adapter) {
    let (model_dir, adapter_dir) = common::fixture_dirs(name);
    let session = Session::open(model_dir.to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    let adapter = Adapter::load_peft(&adapter_dir, &session.model.cfg, &Device::Cpu).unwrap();
    (session, adapter)
}

fn golden_file(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(trainer::testing::fixtures_dir().join("golden").join(file)).unwrap()).unwrap()
}

fn golden() -> Value {
    golden_file("generation.json")
}

/// Fixtures of later families keep their generation rows out of generation.json, so that adding one never
/// rewrites it: Llama-3, Mistral and Qwen3 in generation-families.json, Gemma-2 and Mixtral each in its own
/// golden file (both written by `gen_fixtures.py gen-families`).
const FAMILY_MODELS: &[&str] = &["gemma2-swa", "mixtral-moe", "mixtral-experts"];

/// `(name, {eos_token_id, rows})` of every fixture model with golden generations, and `max_new_tokens`.
fn all_generations() -> Vec<(String, Value, usize)> {
    let mut out = Vec::new();
    for file in ["generation.json", "generation-families.json"] {
        let g = golden_file(file);
        let max_new = g["max_new_tokens"].as_u64().unwrap() as usize;
        out.extend(g["models"].as_object().unwrap().iter().map(|(n, m)| (n.clone(), m.clone(), max_new)));
    }
    for name in FAMILY_MODELS {
        let gen = golden_file(&format!("{name}.json"))["generation"].clone();
        let max_new = gen["max_new_tokens"].as_u64().unwrap() as usize;
        out.push((name.to_string(), gen, max_new));
    }
    out
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn greedy(max_new_tokens: usize) -> GenOptions {
    GenOptions { max_new_tokens, temperature: 0.0, top_p: 1.0, stop: Vec::new(), seed: 0 }
}

#[test]
fn cached_decoding_gives_the_full_forward_logits() {
    let all = all_generations();
    for name in ["llama-gqa", "gemma-mqa", "qwen2-gqa-sharded", "llama3-tied", "mistral-swa", "qwen3-qknorm", "gemma2-swa", "mixtral-moe", "mixtral-experts"] {
        let (s, adapter) = open(name);
        let m = &all.iter().find(|(n, ..)| n == name).expect("a golden generation").1;
        let rows: Vec<Vec<u32>> = m["rows"].as_array().unwrap()[..3].iter().map(|r| ids(&r["prompt"])).collect();
        // Prefill the first 10 tokens of each row (left-padded to the same width), then one token at a time.
        let prefill = 10;
        let mut cache = KvCache::new(&s.model, rows.len());
        let first: Vec<Vec<u32>> = rows.iter().map(|r| r[..prefill].to_vec()).collect();
        let mut logits = s.model.decode(&first, &vec![vec![true; prefill]; rows.len()], &mut cache, Some(&adapter)).unwrap();
        let shortest = rows.iter().map(Vec::len).min().unwrap();
        for pos in prefill..=shortest {
            // logits = prediction after token pos-1; compare with the full forward of each row alone.
            for (b, r) in rows.iter().enumerate() {
                let e = Example::new(r[..pos].to_vec(), vec![false; pos], false);
                let full = s.model.logits(&Batch::pad(&[&e], 0), Some(&adapter)).unwrap().narrow(1, pos - 1, 1).unwrap().flatten_all().unwrap();
                let ours = logits.narrow(0, b, 1).unwrap().flatten_all().unwrap();
                let (d, m) = max_diff(&ours, &full);
                assert!(d <= 1e-4, "{name} row {b} position {pos}: max |diff| {d:e} (max |logit| {m})");
            }
            if pos == shortest {
                break;
            }
            let step: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[pos]]).collect();
            logits = s.model.decode(&step, &vec![vec![true]; rows.len()], &mut cache, Some(&adapter)).unwrap();
        }
        assert_eq!(cache.len(), shortest);
    }
}

#[test]
fn greedy_generation_matches_transformers_exactly() {
    let models = all_generations();
    assert_eq!(models.len(), 10, "every fixture family generates, and Mixtral with expert LoRA");
    for (name, m, max_new) in models {
        let (s, adapter) = open(&name);
        let eos = m["eos_token_id"].as_u64().unwrap() as u32;
        let rows = m["rows"].as_array().unwrap();
        let prompts: Vec<Vec<u32>> = rows.iter().map(|r| ids(&r["prompt"])).collect();
        assert!(prompts.iter().map(Vec::len).min() != prompts.iter().map(Vec::len).max(), "prompts of different lengths: padding is exercised");
        let out = generate(&s.model, Some(&adapter), &s.text.tokenizer, &prompts, &[eos], s.text.pad_id, &greedy(max_new)).unwrap();
        for (i, (r, o)) in rows.iter().zip(&out).enumerate() {
            let mut ours = o.tokens.clone();
            if o.finish == "eos" {
                ours.push(eos);
            }
            assert_eq!(ours, ids(&r["generated"]), "{name} prompt {i}");
            assert_eq!(o.text, s.text.tokenizer.decode(&o.tokens).unwrap());
        }
    }
}

#[test]
fn sampling_is_seeded_and_stop_strings_end_the_answer() {
    let (s, adapter) = open("qwen2-gqa-sharded");
    let g = golden();
    let prompts: Vec<Vec<u32>> = g["models"]["qwen2-gqa-sharded"]["rows"].as_array().unwrap().iter().map(|r| ids(&r["prompt"])).collect();
    let run = |o: &GenOptions| generate(&s.model, Some(&adapter), &s.text.tokenizer, &prompts, &[u32::MAX], s.text.pad_id, o).unwrap();
    let sampled = GenOptions { temperature: 1.0, top_p: 0.9, seed: 7, ..greedy(12) };
    let a = run(&sampled);
    assert_eq!(a, run(&sampled), "same seed, same samples");
    assert_ne!(a, run(&GenOptions { seed: 8, ..sampled.clone() }), "another seed, other samples");
    assert_ne!(a, run(&greedy(12)), "temperature 1 samples away from the argmax");
    // A nucleus smaller than the top token's probability leaves only the argmax.
    assert_eq!(run(&GenOptions { top_p: 1e-9, ..sampled.clone() }).iter().map(|o| &o.tokens).collect::<Vec<_>>(), run(&greedy(12)).iter().map(|o| &o.tokens).collect::<Vec<_>>());
    // Stop at the first generated character of the greedy answer's second token: the answer is cut before it.
    let full = run(&greedy(12));
    let text = &full[0].text;
    let stop: String = s.text.tokenizer.decode(&full[0].tokens[1..2]).unwrap();
    assert!(!stop.is_empty() && text.contains(&stop));
    let cut = run(&GenOptions { stop: vec![stop.clone()], ..greedy(12) });
    assert_eq!(cut[0].finish, "stop");
    assert_eq!(&cut[0].text, &text[..text.find(&stop).unwrap()]);
    assert!(full.iter().all(|o| o.finish == "length" && o.tokens.len() == 12));
}

#[test]
fn generate_command_writes_one_answer_per_record() {
    let root = trainer::testing::fixtures_dir();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answers.jsonl");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["generate", "--model", root.join("models/llama-gqa").to_str().unwrap(), "--adapter", root.join("adapters/llama-gqa").to_str().unwrap()])
        .args(["--data", root.join("data/alpaca.json").to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-new-tokens", "12", "--batch-size", "5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let records: Value = serde_json::from_str(&std::fs::read_to_string(root.join("data/alpaca.json")).unwrap()).unwrap();
    assert_eq!(lines.len(), records.as_array().unwrap().len());
    let (s, _) = open("llama-gqa");
    let g = golden();
    let eos = g["models"]["llama-gqa"]["eos_token_id"].as_u64().unwrap() as u32;
    for (i, row) in g["models"]["llama-gqa"]["rows"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u32> = ids(&row["generated"]).into_iter().filter(|&t| t != eos).collect();
        assert_eq!(lines[i]["answer"], s.text.tokenizer.decode(&want).unwrap(), "record {i}: the same answer as transformers, in file order");
        assert_eq!(lines[i]["reference"], records[i]["output"]);
        assert_eq!(lines[i]["id"], records[i]["id"]);
    }
}

#[test]
fn generate_renders_conversations_with_a_chat_template_up_to_the_answer() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chat.jsonl");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["generate", "--model", repo.join("data/tiny-llama").to_str().unwrap(), "--data", repo.join("data/samples/multiturn-es.json").to_str().unwrap()])
        .args(["--format", "sharegpt", "--template", "chatml", "--out", out.to_str().unwrap(), "--max-new-tokens", "4", "--temperature", "0.7", "--seed", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let records: Value = serde_json::from_str(&std::fs::read_to_string(repo.join("data/samples/multiturn-es.json")).unwrap()).unwrap();
    assert_eq!(lines.len(), 8);
    for (l, r) in lines.iter().zip(records.as_array().unwrap()) {
        let turns = r["conversations"].as_array().unwrap();
        let last = turns.last().unwrap();
        assert_eq!(l["reference"], last["value"], "the conversation's last answer is the reference");
        let prompt = l["prompt"].as_str().unwrap();
        // Every turn before the last answer is in the prompt, which ends asking the assistant to speak.
        assert!(prompt.trim_end().ends_with("<|im_start|>assistant"), "{prompt}");
        assert!(prompt.contains(turns[turns.len() - 2]["value"].as_str().unwrap()));
        assert!(!prompt.contains(last["value"].as_str().unwrap()));
        assert!(l["new_tokens"].as_u64().unwrap() <= 4);
    }
}

/// A chat model's answer ends at its template's end-of-turn token and at every id its generation_config lists as
/// `eos_token_id`, not only at the first EOS. The fixture model has no chat template, so a copy gets one whose
/// assistant turns end with a marker; the marker is the vocabulary string of a token the model is known to
/// generate (found by decoding the same prompt without it), so the answer must stop right before that token.
#[test]
fn answers_stop_at_the_templates_end_of_turn_and_at_every_listed_eos() {
    use trainer::eval::multiturn::{answer_questions, Question};
    let src = trainer::testing::fixtures_dir().join("models/llama-gqa");
    let vocab: serde_json::Map<String, Value> = serde_json::from_str::<Value>(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap()["model"]["vocab"].as_object().unwrap().clone();
    let string_of = |id: u32| vocab.iter().find(|(_, v)| v.as_u64() == Some(id as u64)).map(|(k, _)| k.clone()).unwrap();
    // User turns never carry the marker: turn 1's prompt is the same whatever the marker is.
    let template = |marker: &str| format!("{{% for m in messages %}}{{% if m['role'] == 'user' %}}{{{{ 'U: ' + m['content'] + '\\n' }}}}{{% else %}}{{{{ 'A: ' + m['content'] + '{marker}' + '\\n' }}}}{{% endif %}}{{% endfor %}}{{% if add_generation_prompt %}}{{{{ 'A:' }}}}{{% endif %}}");
    let copy = |marker: &str, generation_eos: Value| {
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let mut tc: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap()).unwrap();
        tc["chat_template"] = Value::String(template(marker));
        std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
        std::fs::write(dir.path().join("generation_config.json"), serde_json::json!({"eos_token_id": generation_eos}).to_string()).unwrap();
        let s = Session::open(dir.path().to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
        (dir, s)
    };
    let questions = [Question { question_id: 1.into(), category: "writing".into(), turns: vec!["Tell me about the sea".into()], reference: None, language: None }];
    let (_d, plain) = copy("</s>", serde_json::json!(2));
    let answered = answer_questions(&plain, None, &questions, "model", 1, &greedy(8)).unwrap();
    assert_eq!((answered[0].finish[0].as_str(), answered[0].new_tokens[0]), ("length", 8), "the model runs on without a marker");
    let prompt = plain.text.tokenizer.encode(&answered[0].prompts[0], false).unwrap();
    let tokens = generate(&plain.model, None, &plain.text.tokenizer, &[prompt], &[plain.text.eos_id], plain.text.pad_id, &greedy(8)).unwrap()[0].tokens.clone();
    // The first later token that did not occur before it and whose vocabulary string can be a marker.
    let k = (1..tokens.len()).find(|&k| !tokens[..k].contains(&tokens[k]) && string_of(tokens[k]).chars().all(char::is_alphanumeric)).expect("a usable token among the first 8");
    let before = plain.text.tokenizer.decode(&tokens[..k]).unwrap();

    // The template's end of turn, a token of the vocabulary: the answer ends before it, finished as eos.
    let (_d, marked) = copy(&string_of(tokens[k]), serde_json::json!(2));
    let a = &answer_questions(&marked, None, &questions, "model", 1, &greedy(8)).unwrap()[0];
    assert_eq!((a.finish[0].as_str(), a.new_tokens[0], a.answers[0].as_str()), ("eos", k, before.as_str()), "stops at the end-of-turn token {}", tokens[k]);

    // generation_config's eos list: any of its ids ends the answer.
    let (_d, listed) = copy("</s>", serde_json::json!([2, tokens[k]]));
    assert_eq!(listed.text.eos_id, 2, "training keeps the first EOS");
    assert!(listed.text.eos_ids.contains(&tokens[k]));
    let a = &answer_questions(&listed, None, &questions, "model", 1, &greedy(8)).unwrap()[0];
    assert_eq!((a.finish[0].as_str(), a.new_tokens[0], a.answers[0].as_str()), ("eos", k, before.as_str()), "stops at generation_config's second eos_token_id");
}
