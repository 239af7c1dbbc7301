//! Multi-turn generation against transformers (tests/fixtures/golden/multiturn.json, from `gen_fixtures.py
//! gen-multiturn`).

mod common;

use candle_core::{DType, Device};
use serde_json::Value;
use trainer::eval::multiturn::{answer_questions, Question};
use trainer::generate::GenOptions;
use trainer::lora::Adapter;
use trainer::session::Session;

fn golden() -> Value {
    common::json(&trainer::testing::fixtures_dir().join("golden/multiturn.json"))
}

#[test]
fn two_turn_answers_match_transformers_and_turn_two_sees_turn_one() {
    let g = golden();
    let questions: Vec<Question> = g["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| Question { question_id: q["question_id"].clone(), category: q["category"].as_str().unwrap().into(), turns: q["turns"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect(), reference: None })
        .collect();
    let max_new = g["max_new_tokens"].as_u64().unwrap() as usize;
    let root = trainer::testing::fixtures_dir();
    for (name, m) in g["models"].as_object().unwrap() {
        let session = Session::open(root.join("models").join(name).to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
        let adapter = Adapter::load_peft(&root.join("adapters").join(name), &session.model.cfg, &Device::Cpu).unwrap();
        assert_eq!(session.text.eos_id as u64, m["eos_token_id"].as_u64().unwrap());
        let opts = GenOptions { max_new_tokens: max_new, temperature: 0.0, top_p: 1.0, stop: Vec::new(), seed: 0 };
        // Both questions in one batch per turn: left padding is exercised as well.
        let ours = answer_questions(&session, Some(&adapter), &questions, g["template"].as_str().unwrap(), 8, &opts).unwrap();
        for (q, (a, want)) in questions.iter().zip(ours.iter().zip(m["rows"].as_array().unwrap())) {
            for turn in 0..2 {
                let at = format!("{name} question {} turn {}", q.key(), turn + 1);
                assert_eq!(a.prompts[turn], want["prompts"][turn].as_str().unwrap(), "{at}: prompt");
                let ids: Vec<u32> = session.text.tokenizer.encode(&a.prompts[turn], false).unwrap();
                let want_ids: Vec<u32> = want["prompt_ids"][turn].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                assert_eq!(ids, want_ids, "{at}: prompt ids");
                let generated: Vec<u32> = want["generated"][turn].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
                assert_eq!(a.new_tokens[turn] + usize::from(a.finish[turn] == "eos"), generated.len(), "{at}: number of new tokens");
                assert_eq!(a.answers[turn], want["answers"][turn].as_str().unwrap(), "{at}: answer text (generated {generated:?})");
            }
            // The model's own turn-1 answer, exactly as generated, sits in the turn-2 prompt.
            assert!(a.prompts[1].contains(&format!("<|im_start|>assistant\n{}<|im_end|>", a.answers[0])), "{name}: {}", a.prompts[1]);
            assert!(a.prompts[1].starts_with(&a.prompts[0]));
        }
    }
}
