"""Converts OMGEval's release (github.com/blcuicall/OMGEval) into the question and answer files the trainer's judge
reads (MT-Bench's question.jsonl layout; FastChat's model_answer layout for the baseline).

OMGEval ships its questions as plain text, one per line (data/OMGEval_Spanish.txt, ...), and the reference models'
answers in AlpacaEval's layout (model_outputs/spanish/gpt3.5-turbo.json: [{"instruction", "output",
"generator"}, ...]). English has no question file there: its questions are AlpacaEval's, taken from the
baseline file's `instruction` fields (leave out --questions).

    python3 to_mt_bench.py --questions data/OMGEval_Spanish.txt \
        --baseline model_outputs/spanish/gpt3.5-turbo.json --language es --out es

writes es/question.jsonl ({"question_id": line number from 1, "category": "general", "turns": [question],
"language": "es"}) and es/baseline.jsonl ({"question_id", "model_id", "choices": [{"index": 0, "turns":
[answer]}]}), the baseline's answer matched to each question by its text. A question without a baseline answer
is an error naming its line.
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", help="OMGEval_<Language>.txt, one question per line (default: the baseline's instructions)")
    ap.add_argument("--baseline", required=True, help="model_outputs/<language>/<model>.json (AlpacaEval layout)")
    ap.add_argument("--language", required=True, help="the code written into each question's `language`, e.g. es")
    ap.add_argument("--out", required=True, help="folder for question.jsonl and baseline.jsonl")
    a = ap.parse_args()
    with open(a.baseline, encoding="utf-8") as f:
        outputs = json.load(f)
    answers = {}
    for o in outputs:
        answers.setdefault(o["instruction"].strip(), o)
    if a.questions:
        with open(a.questions, encoding="utf-8") as f:
            questions = [line.rstrip("\n") for line in f if line.strip()]
    else:
        questions = [o["instruction"] for o in outputs]
    os.makedirs(a.out, exist_ok=True)
    q_rows, b_rows = [], []
    for n, q in enumerate(questions, start=1):
        o = answers.get(q.strip())
        if o is None:
            sys.exit(f"{a.questions}:{n}: no answer in {a.baseline} for this question")
        q_rows.append({"question_id": n, "category": "general", "turns": [q], "language": a.language})
        b_rows.append({"question_id": n, "model_id": o.get("generator", "baseline"), "choices": [{"index": 0, "turns": [o["output"]]}]})
    for name, rows in [("question.jsonl", q_rows), ("baseline.jsonl", b_rows)]:
        tmp = os.path.join(a.out, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, os.path.join(a.out, name))
    print(f"{a.out}: {len(q_rows)} questions")


if __name__ == "__main__":
    main()
