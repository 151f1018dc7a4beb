"""The one record type every data source is normalised into."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


class DataFormatError(ValueError):
    """A record that cannot be used; the message names the file and line (or Hub row)."""


@dataclass(frozen=True)
class PreferencePair:
    """z = (x, y⁺, y⁻): a prompt, the preferred (chosen) and the dispreferred (rejected) response.

    `prompt` is the conversation up to the responses in the source's own format (HH-RLHF keeps its
    ``\\n\\nHuman: …\\n\\nAssistant:`` string); `meta` carries source-specific extras (scores, subset,
    noise flags, and for synthetic pairs the id of the base pair they derive from).
    """

    id: str
    prompt: str
    chosen: str
    rejected: str
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def content_hash(self) -> str:
        """Hash of the texts alone (not id or metadata): equal pairs collide across splits."""
        h = hashlib.blake2b(digest_size=16)
        for part in (self.prompt, self.chosen, self.rejected):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def prompt_hash(self) -> str:
        return hashlib.blake2b(self.prompt.encode("utf-8"), digest_size=16).hexdigest()

    def prompt_key(self) -> str:
        """The prompt with whitespace runs collapsed and the ends stripped ("" for no prompt):
        the key that splits group pairs by, so one prompt never lands in two splits."""
        return normalise_text(self.prompt)

    def responses_key(self) -> tuple[str, str]:
        """The two responses, whitespace-normalised, in sorted order: a pair and its twin with
        chosen and rejected swapped have the same key."""
        a, b = normalise_text(self.chosen), normalise_text(self.rejected)
        return (a, b) if a <= b else (b, a)

    def unordered_hash(self) -> str:
        """Hash of the normalised prompt and the unordered responses: equal for a pair and its
        label-swapped twin (and for copies that differ only in whitespace)."""
        h = hashlib.blake2b(digest_size=16)
        for part in (self.prompt_key(), *self.responses_key()):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()


def normalise_text(text: str) -> str:
    """`text` with every run of whitespace collapsed to one space and the ends stripped."""
    return " ".join(text.split())
