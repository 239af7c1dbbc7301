"""Writes our JSONL samples again in the files and layouts the benchmarks are released in, so that
data/benchmarks/ can stand in for a benchmarks root holding the real downloads (recipes/native-vs-translated.toml,
`--benchmarks-root data/benchmarks`). Only our own items are written; no released item is copied.

    python3 data/benchmarks/make_release_layout.py      # from the repository root; rewrites the files below

Parquet: pyarrow (26.0.1 made the committed files); CSV as pandas' `to_csv()` writes it, index included (an
unnamed first column), which is how CMMLU's release files look (`,Question,A,B,C,D,Answer`).
"""
import csv
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))


def rows(rel):
    with open(os.path.join(HERE, rel), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def out(rel):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def parquet(src, dst):
    table = pa.Table.from_pylist(rows(src))
    # A column that is null in every sample row (MGSM's test answers) is a string column in the release.
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, pa.field(field.name, pa.string()), table.column(i).cast(pa.string()))
    pq.write_table(table, out(dst))


def csv_with_index(src, dst, columns):
    with open(out(dst), "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([""] + columns)
        for i, r in enumerate(rows(src)):
            w.writerow([i] + [r[c] for c in columns])


# TyDi QA GoldP: google-research-datasets/tydiqa, config secondary_task.
for split in ["validation", "train"]:
    parquet(f"tydiqa/tydiqa-goldp.{split}.jsonl", f"tydiqa/secondary_task/{split}-00000-of-00001.parquet")
for lang in ["es", "ru", "zh"]:
    # XQuAD: google/xquad, config xquad.<lang>.
    parquet(f"xquad/xquad.{lang}.validation.jsonl", f"xquad/xquad.{lang}/validation-00000-of-00001.parquet")
# MGSM: juletxara/mgsm, config <lang> (es/ru/zh for the study, en/fr too for recipes/ultralink.toml).
for lang in ["es", "ru", "zh", "en", "fr"]:
    for split in ["test", "train"]:
        parquet(f"mgsm/mgsm_{lang}.{split}.jsonl", f"mgsm/{lang}/{split}-00000-of-00001.parquet")
# CMMLU: haonan-li/cmmlu (cmmlu_v1_0_1.zip unpacked): test/<subject>.csv, dev/<subject>.csv.
for split in ["test", "dev"]:
    for subject in ["agronomy", "astronomy"]:
        csv_with_index(f"cmmlu/{split}/{subject}.jsonl", f"cmmlu/{split}/{subject}.csv", ["Question", "A", "B", "C", "D", "Answer"])
# C-Eval: ceval/ceval-exam, config = subject: <subject>/val-….parquet, <subject>/dev-….parquet.
for subject in ["accountant", "computer_network"]:
    for split in ["val", "dev"]:
        parquet(f"ceval/{subject}/{split}.jsonl", f"ceval-exam/{subject}/{split}-00000-of-00001.parquet")
# MMMLU: openai/MMMLU: test/mmlu_<LOCALE with a hyphen>.csv.
for locale in ["ES_LA", "ZH_CN"]:
    csv_with_index(f"mmmlu/mmlu_{locale}.jsonl", f"mmmlu/test/mmlu_{locale.replace('_', '-')}.csv", ["Question", "A", "B", "C", "D", "Answer", "Subject"])
