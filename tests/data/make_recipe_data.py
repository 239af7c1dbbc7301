"""Writes the tiny training sets of tests/data/ultralink and tests/data/polyglot-x: synthetic records we made up,
in the layouts recipes/ultralink.toml and recipes/polyglot-x.toml read (the releases' files are not here).

    python3 tests/data/make_recipe_data.py

Deterministic: running it again rewrites the same bytes.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# Per language: a question and an answer pattern about numbered everyday things (our own wording).
PHRASES = {
    "en": ("How do I look after plant number {i}?", "Water plant number {i} once a week and keep it near a window."),
    "zh": ("第{i}号植物应该怎么照顾？", "每周给第{i}号植物浇一次水，并把它放在窗边。"),
    "es": ("¿Cómo cuido la planta número {i}?", "Riega la planta número {i} una vez por semana y déjala cerca de una ventana."),
    "ru": ("Как ухаживать за растением номер {i}?", "Поливайте растение номер {i} раз в неделю и держите его у окна."),
    "fr": ("Comment entretenir la plante numéro {i} ?", "Arrosez la plante numéro {i} une fois par semaine et gardez-la près d'une fenêtre."),
    "de": ("Wie pflege ich Pflanze Nummer {i}?", "Gieße Pflanze Nummer {i} einmal pro Woche und stelle sie ans Fenster."),
    "it": ("Come curo la pianta numero {i}?", "Annaffia la pianta numero {i} una volta a settimana e tienila vicino a una finestra."),
}
FOLLOW_UP = {
    "en": ("And in winter?", "In winter, water it every ten days."),
    "zh": ("冬天呢？", "冬天每十天浇一次水。"),
    "es": ("¿Y en invierno?", "En invierno, riégala cada diez días."),
    "ru": ("А зимой?", "Зимой поливайте раз в десять дней."),
    "fr": ("Et en hiver ?", "En hiver, arrosez-la tous les dix jours."),
    "de": ("Und im Winter?", "Im Winter alle zehn Tage gießen."),
    "it": ("E in inverno?", "In inverno annaffiala ogni dieci giorni."),
}


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def ultralink():
    # The release's layout: {lang}_{chat_specific,chat_agnostic,math,code}.jsonl, each line
    # {"id": "<file stem>_<n>", "data": [user, assistant, ...]}.
    for lang in ["en", "zh", "es", "ru", "fr"]:
        q, a = PHRASES[lang]
        fq, fa = FOLLOW_UP[lang]
        for kind in ["chat_specific", "chat_agnostic", "math", "code"]:
            rows = []
            for i in range(50):
                data = [q.format(i=i), a.format(i=i)]
                if i % 3 == 0:
                    data += [fq, fa]
                if kind == "math":
                    data = [f"{i} + {i + 2} = ?", f"{i} + {i + 2} = {2 * i + 2}"]
                if kind == "code":
                    data = [f"Python: print {i} squared.", f"print({i} ** 2)"]
                rows.append({"id": f"{lang}_{kind}_{i}", "data": data})
            write_jsonl(os.path.join(HERE, "ultralink", f"{lang}_{kind}.jsonl"), rows)


def polyglot():
    # Lima-X: one file per language, no ids, the same instruction at the same line in every language.
    # Bactrian-X: alpaca fields with an id; the Italian file lost one record (as the release removed instances
    # without output), so alignment must go by id, not by line.
    for lang in ["en", "de", "fr", "it", "es"]:
        q, a = PHRASES[lang]
        fq, fa = FOLLOW_UP[lang]
        lima = [{"conversations": [q.format(i=i), a.format(i=i)] + ([fq, fa] if i % 4 == 0 else [])} for i in range(20)]
        write_jsonl(os.path.join(HERE, "polyglot-x", "lima-x", f"{lang}.jsonl"), lima)
        bactrian = [{"instruction": q.format(i=100 + i), "input": "", "output": a.format(i=100 + i), "id": f"{i}"} for i in range(21) if not (lang == "it" and i == 7)]
        write_jsonl(os.path.join(HERE, "polyglot-x", "bactrian-x", f"{lang}.jsonl"), bactrian)


if __name__ == "__main__":
    ultralink()
    polyglot()
