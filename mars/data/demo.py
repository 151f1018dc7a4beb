"""The embedded demo task: generated preference pairs whose ground truth is known.

Each prompt asks a factual question from a small built-in table (capitals, animal sounds, colours,
opposites). The chosen answer is correct and helpful. The rejected answer is either *easy* (a
refusal, an off-topic reply or a rude brush-off) or *hard* (the same helpful style, but with the
fact of another item of the same relation). A reward model learns the easy pairs in a few steps
and the hard ones only by learning which fact goes with which item, so the curve is real and
the per-kind accuracy (meta["difficulty"]) shows it. Not a benchmark: use `data=hh_rlhf` etc.
"""
from __future__ import annotations

import random

from mars.data.records import PreferencePair

FACTS: dict[str, dict[str, str]] = {
    "capital": {
        "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
        "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa",
        "Australia": "Canberra", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
        "Mexico": "Mexico City", "India": "New Delhi", "Kenya": "Nairobi", "Greece": "Athens",
        "Portugal": "Lisbon", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
        "Poland": "Warsaw", "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest",
        "Turkey": "Ankara", "Peru": "Lima", "Chile": "Santiago", "Thailand": "Bangkok",
        "Vietnam": "Hanoi", "South Korea": "Seoul", "Cuba": "Havana", "Iran": "Tehran",
    },
    "sound": {
        "dog": "bark", "cat": "meow", "cow": "moo", "duck": "quack", "lion": "roar",
        "sheep": "bleat", "horse": "neigh", "owl": "hoot", "snake": "hiss", "pig": "oink",
        "frog": "croak", "bee": "buzz", "wolf": "howl", "mouse": "squeak", "rooster": "crow",
        "donkey": "bray", "elephant": "trumpet", "pigeon": "coo",
    },
    "colour": {
        "banana": "yellow", "grass": "green", "snow": "white", "coal": "black", "the sky": "blue",
        "a tomato": "red", "an orange": "orange", "a lemon": "yellow", "a carrot": "orange",
        "chocolate": "brown", "a lime": "green", "an eggplant": "purple", "milk": "white",
        "a strawberry": "red", "a flamingo": "pink", "blood": "red", "the sea": "blue",
    },
    "opposite": {
        "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
        "up": "down", "early": "late", "open": "closed", "full": "empty", "strong": "weak",
        "old": "young", "rich": "poor", "hard": "soft", "loud": "quiet", "wet": "dry",
        "near": "far", "thick": "thin", "cheap": "expensive", "clean": "dirty", "high": "low",
    },
}

QUESTIONS = {
    "capital": ["What is the capital of {k}?", "Which city is the capital of {k}?",
                "Can you tell me the capital city of {k}?", "Name the capital of {k}, please."],
    "sound": ["What sound does a {k} make?", "How does a {k} sound?",
              "Which noise is a {k} known for?", "My kid asks what a {k} says. What should I tell her?"],
    "colour": ["What colour is {k}?", "Which colour is {k} usually?",
               "Tell me the colour of {k}.", "If I picture {k}, what colour should I see?"],
    "opposite": ["What is the opposite of '{k}'?", "Give me the antonym of '{k}'.",
                 "Which word means the opposite of '{k}'?", "What word is opposite to '{k}'?"],
}

ANSWERS = {
    "capital": ["The capital of {k} is {v}.", "{v} is the capital city of {k}.",
                "It is {v}. {v} has been the capital of {k} for a long time.",
                "Sure! The capital of {k} is {v}."],
    "sound": ["A {k} makes a {v} sound.", "A {k} says '{v}'.",
              "You can tell her that a {k} goes '{v}'.", "Sure! The typical sound of a {k} is a {v}."],
    "colour": ["{K} is usually {v}.", "The colour of {k} is {v}.",
               "Most of the time, {k} is {v}.", "Sure! {K} is {v}."],
    "opposite": ["The opposite of '{k}' is '{v}'.", "'{v}' is the antonym of '{k}'.",
                 "A word that means the opposite of '{k}' is '{v}'.", "Sure! The opposite of '{k}' is '{v}'."],
}

EASY_REJECTIONS = [
    "I don't know. Look it up yourself.",
    "Why would you ask me that? Figure it out on your own.",
    "I'd rather not answer questions like this.",
    "That's a boring question. Ask me something else.",
    "Let's talk about something different, like the weather today.",
    "Hmm, I have no idea and I don't really care.",
    "I can't help with that.",
    "Honestly, it doesn't matter. Next question.",
]


def _fill(template: str, key: str, value: str) -> str:
    return template.format(k=key, v=value, K=key[:1].upper() + key[1:])


def _pairs(n: int, keys: dict[str, list[str]], rng: random.Random, hard_fraction: float,
           prefix: str) -> list[PreferencePair]:
    seen: set[tuple[str, str, str]] = set()
    pairs: list[PreferencePair] = []
    relations = sorted(keys)
    for _ in range(20 * n):
        if len(pairs) == n:
            break
        relation = rng.choice(relations)
        table = FACTS[relation]
        key = rng.choice(keys[relation])
        question = _fill(rng.choice(QUESTIONS[relation]), key, table[key])
        chosen = _fill(rng.choice(ANSWERS[relation]), key, table[key])
        hard = rng.random() < hard_fraction
        if hard:
            wrong = rng.choice(sorted({v for v in table.values() if v != table[key]}))
            rejected = _fill(rng.choice(ANSWERS[relation]), key, wrong)
        else:
            rejected = rng.choice(EASY_REJECTIONS)
        if (question, chosen, rejected) in seen:
            continue
        seen.add((question, chosen, rejected))
        pairs.append(PreferencePair(
            id=f"{prefix}-{len(pairs)}", prompt=f"\n\nHuman: {question}\n\nAssistant:",
            chosen=chosen, rejected=rejected, source="demo",
            meta={"relation": relation, "difficulty": "hard" if hard else "easy"}))
    return pairs


def demo_splits(n_train: int, n_val: int, n_test: int, seed: int = 0, hard_fraction: float = 0.6,
                held_out_items: float = 0.3) -> dict[str, list[PreferencePair]]:
    """Train pairs about one part of each table's items; val and test about the rest."""
    rng = random.Random(seed)
    train_keys, eval_keys = {}, {}
    for relation, table in sorted(FACTS.items()):
        keys = sorted(table)
        rng.shuffle(keys)
        cut = max(1, round(held_out_items * len(keys)))
        eval_keys[relation], train_keys[relation] = keys[:cut], keys[cut:]
    held_out = _pairs(n_val + n_test, eval_keys, rng, hard_fraction, "demo-eval")
    return {"train": _pairs(n_train, train_keys, rng, hard_fraction, "demo-train"),
            "val": held_out[:n_val], "test": held_out[n_val:]}
