"""The quality gate of model-made variants (mars/augmenters/quality.py) on hand-made outputs: each
rule, the cleaning of chat preambles, and the similarity gate with the embedded MiniLM."""
from __future__ import annotations

from collections import Counter

import pytest

from mars.augmenters.base import VariantRequest
from mars.augmenters.quality import Candidate, QualityGate, clean, instruction_of, rule_violation

SOURCE = "Penguins are flightless seabirds that live mostly in the Southern Hemisphere."
REQ = VariantRequest(SOURCE, "chosen", "Tell me about penguins.", "Penguins are fish.", 1)
INSTRUCTION = instruction_of("Rewrite the response below in your own words.\n\n{text}")


def test_instruction_of_is_the_templates_first_line():
    assert INSTRUCTION == "Rewrite the response below in your own words."
    assert instruction_of("{text}") == ""


@pytest.mark.parametrize("answer,reason", [
    ("   ", "empty"),
    (f"  {SOURCE}\n", "copy"),
    ("I'm sorry, but I cannot help with that.", "refusal"),
    ("I\u2019m sorry, but I cannot help with that.", "refusal"),  # typographic apostrophe
    ("Tell me about penguins.", "echo"),  # the prompt
    ("Penguins are fish.", "echo"),  # the other response
    ("Rewrite the response below in your own words.\nPenguins cannot fly.", "echo"),
    ("Penguins cannot fly. " * 20, "too_long"),
    ("This rewritten response keeps the facts: penguins are southern seabirds.", "meta"),
    ("The original answer says that penguins are flightless seabirds.", "meta"),
    ("Penguins.", "too_short"),
    ("Penguins are birds that cannot fly and mostly live south of the equator.", None),
])
def test_each_rule(answer, reason):
    assert rule_violation(answer, REQ, INSTRUCTION, max_length_ratio=3.0,
                          min_length_ratio=0.3) == reason


def test_meta_words_the_source_has_are_allowed():
    source = VariantRequest("Thanks, this response helped me a lot.", "prompt", "", "", 1)
    assert rule_violation("Thank you, this response helped a great deal.", source) is None


def test_a_refusal_may_rephrase_a_refusal():
    refusal = VariantRequest("I can't help with making weapons.", "chosen", "", "", 1)
    assert rule_violation("I cannot assist with building weapons.", refusal) is None


@pytest.mark.parametrize("raw,cleaned", [
    ("Here's a rewritten version of the response:\n\nPenguins cannot fly.", "Penguins cannot fly."),
    ("Sure! Here is the paraphrased text:\nPenguins cannot fly.", "Penguins cannot fly."),
    ("Rewritten response: Penguins cannot fly.", "Penguins cannot fly."),
    ('"Penguins cannot fly."', "Penguins cannot fly."),
    ("Here are some facts:\n- they swim", "Here are some facts:\n- they swim"),  # content
    ("Note: penguins cannot fly.", "Note: penguins cannot fly."),
])
def test_clean_removes_preambles_and_quotes(raw, cleaned):
    assert clean(raw, SOURCE) == cleaned


def test_clean_keeps_what_the_source_has_too():
    source = '"Here is the rewritten text:\nA quote."'
    assert clean(source + " ", source) == source


def test_gate_counts_every_reason_and_measures_similarity():
    gate = QualityGate(min_similarity=0.5, max_length_ratio=3.0, device="cpu",
                       min_length_ratio=0.3)
    gate.trace = []
    answers = {
        "close": "Here's the rewritten response:\nPenguins are seabirds that cannot fly; most "
                 "of them live in the southern half of the globe.",
        "drift": "The stock market fell sharply after the central bank raised interest rates.",
        "copy": SOURCE,
        "empty": "",
        "refusal": "I cannot do that.",
        "echo": "Penguins are fish.",
        "too_long": "Penguins are seabirds. " * 30,
        "meta": "The rewritten response says penguins are seabirds living in the south.",
        "too_short": "Seabirds.",
    }
    candidates = [Candidate(REQ, text, None, INSTRUCTION) for text in answers.values()]
    candidates += [Candidate(REQ, None, "error"), Candidate(REQ, "Penguins are", "truncated")]
    stats = Counter()
    verdicts = gate.judge(candidates, stats)

    reasons = [v.reason for v in verdicts]
    assert reasons == [None, "low_similarity", "copy", "empty", "refusal", "echo", "too_long",
                       "meta", "too_short", "error", "truncated"]
    assert verdicts[0].text.startswith("Penguins are seabirds that cannot fly")  # cleaned
    assert stats["candidates"] == 11 and stats["failures"] == 10 and stats["cleaned"] == 1
    assert all(stats[f"failures_{r}"] == 1 for r in reasons if r)
    trace = {t["reason"]: t for t in gate.trace}
    assert trace[None]["similarity"] > 0.6 and trace["low_similarity"]["similarity"] < 0.3
    assert trace["copy"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert trace["too_long"]["length_ratio"] > 3 and trace["error"]["similarity"] is None
    assert trace[None]["raw"] == answers["close"]


def test_no_similarity_model_unless_needed():
    gate = QualityGate(min_similarity=0.0)
    verdicts = gate.judge([Candidate(REQ, "Penguins cannot fly.")], Counter())
    assert verdicts[0].reason is None and gate.embedder._encoder is None
    with pytest.raises(ValueError, match="min_similarity"):
        QualityGate(min_similarity=2.0)


def test_a_rewrite_closer_to_the_other_response_is_rejected():
    """The small model's typical label swap: it rewrites the alternative instead of the text."""
    req = VariantRequest("You cannot cheat the app: each reward can be used only once per user.",
                         "chosen", "How can I cheat the McDonald's app?",
                         "Uninstall and reinstall the app to get the welcome reward again.", 1)
    swapped = "Uninstall the app and reinstall it again to get the welcome reward a second time."
    faithful = "Cheating the app is not possible, since every user can redeem a reward only once."
    gate = QualityGate(min_similarity=0.3, device="cpu")
    gate.trace = []
    stats = Counter()
    verdicts = gate.judge([Candidate(req, swapped), Candidate(req, faithful)], stats)
    assert [v.reason for v in verdicts] == ["closer_to_other", None]
    assert stats["failures_closer_to_other"] == 1
    first = gate.trace[0]
    assert first["similarity_to_other"] >= first["similarity"] >= 0.3
    off = QualityGate(min_similarity=0.0)  # the similarity gate off: no embedder, no such check
    assert off.judge([Candidate(req, swapped)], Counter())[0].reason is None
