"""A pair → the exact token ids of each side: text format, truncation rule, and its count.

Text format: the conversation rendered by the tokenizer's chat template, which is the model's own
where it has one and mars's HH format ("\\n\\nHuman: …\\n\\nAssistant: …", `MARS_TEMPLATE`)
otherwise; the export carries the same template, so `apply_chat_template([user, assistant])`
anywhere renders what mars trained on. HH-RLHF dialogue prompts are parsed turn by turn (every
paragraph kept); a plain prompt is one user turn; an empty prompt, no turn (the response alone is
an assistant turn). The response is found
by construction: the prompt rendered with `add_generation_prompt=True` must be a prefix of the full
conversation, or the template is named in an error. The ids are those of the whole rendered text
(what a tokenizer makes of it), with the tokenizer's special tokens added unless the template
already renders them (no doubled BOS).

Truncation rule: when a sequence exceeds `max_length`, the prompt is cut from the left first (its
latest turn, next to the response, stays) down to `min_prompt_tokens`; if that is not enough, the
response is cut: from the left by default, so that its end (where a decoder reads the reward)
stays (`truncation="keep_end"`), or from the right (`"keep_start"`, for pairs that differ early).
Pairs are never dropped; every truncated pair is counted. A pair whose two sides are the same ids
after truncation (what told them apart was cut) carries no preference: it is flagged
`uninformative`, counted and named, and kept out of the loss and of accuracy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from mars.config import TRUNCATIONS
from mars.data.records import PreferencePair

HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """A prompt as chat messages: an HH-RLHF dialogue turn by turn, anything else one user turn."""
    if not prompt:
        return []
    if not prompt.startswith("\n\nHuman:"):
        return [{"role": "user", "content": prompt}]
    parts = HH_TURN.split(prompt)[1:]  # role, text, role, text, …
    messages = []
    for role, text in zip(parts[::2], parts[1::2]):
        text = text[1:] if text.startswith(" ") else text
        messages.append({"role": "user" if role == "Human" else "assistant", "content": text})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the trailing "\n\nAssistant:" the response follows
    return messages


@dataclass
class EncodedPair:
    """Token ids of one pair, special tokens included; `index` is the pair's place in its set,
    `margin` its own target margin (None: the loss config's), `truncated` per side."""

    index: int
    chosen: list[int]
    rejected: list[int]
    margin: Optional[float] = None
    truncated: tuple[bool, bool] = (False, False)

    @property
    def length(self) -> int:
        return max(len(self.chosen), len(self.rejected))

    @property
    def uninformative(self) -> bool:
        """Both sides the same ids: the loss is log 2 whatever the model does, Δ is 0 by construction."""
        return self.chosen == self.rejected


def split_uninformative(encoded: list[EncodedPair]) -> tuple[list[EncodedPair], list[int]]:
    """(the pairs a loss or an accuracy can use, the indices of those it cannot)."""
    return [e for e in encoded if not e.uninformative], [e.index for e in encoded if e.uninformative]


class TemplateError(ValueError):
    """A chat template that does not render the prompt as a prefix of the conversation."""


@dataclass
class PairFormatter:
    """Renders and tokenises pairs once (memoised by text) and applies the truncation rule."""

    tokenizer: object
    max_length: int
    min_prompt_tokens: int = 32
    truncation: str = "keep_end"  # which end of a too-long response stays
    truncated: int = 0  # pairs with at least one side truncated, since creation
    _memo: dict[tuple[str, str], tuple[list[int], list[int]]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, tokenizer, backbone) -> "PairFormatter":
        """The formatter a backbone config (or an export's) asks for."""
        return cls(tokenizer, backbone.max_length, backbone.min_prompt_tokens, backbone.truncation)

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation={self.truncation!r}: use one of {', '.join(TRUNCATIONS)}")
        probe = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(probe)) if probe[i:i + len(bare)] == bare)
        self.prefix, self.suffix = probe[:start], probe[start + len(bare):]

    def texts(self, prompt: str, response: str) -> tuple[str, str]:
        """(prompt part, response part) of the rendered conversation; together the full text."""
        messages = hh_messages(prompt)
        render = self.tokenizer.apply_chat_template
        head = render(messages, add_generation_prompt=True, tokenize=False) if messages else ""
        full = render(messages + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(head):
            name = getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)
            raise TemplateError(
                f"the chat template of {name} renders the prompt (add_generation_prompt=True) as {head[-80:]!r}, "
                f"which is not a prefix of the conversation {full[:len(head) + 20][-100:]!r}: mars cannot tell the "
                "response apart; use backbone.chat_template=never (mars's own format) or a template that does")
        return head, full[len(head):]

    def adds_special_tokens(self, text: str) -> bool:
        """Whether the tokenizer's own special tokens go around `text` (not when it renders them)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return not (self.prefix and ids[: len(self.prefix)] == self.prefix)

    def _split_ids(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        key = (prompt, response)
        if key not in self._memo:
            head, tail = self.texts(prompt, response)
            # verbose=False: a text longer than the model's maximum is fine here, it is truncated below
            ids = self.tokenizer(head + tail, add_special_tokens=False, verbose=False)["input_ids"]
            head_ids = self.tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]
            k = 0  # tokens can merge across the boundary: the prompt part is the common prefix
            while k < min(len(ids), len(head_ids)) and ids[k] == head_ids[k]:
                k += 1
            self._memo[key] = (ids[:k], ids[k:])
        return self._memo[key]

    def _join(self, prompt: list[int], response: list[int]) -> tuple[list[int], bool]:
        prefix = [] if self.prefix and prompt[: len(self.prefix)] == self.prefix else self.prefix
        suffix = [] if self.suffix and response[-len(self.suffix):] == self.suffix else self.suffix
        budget = self.max_length - len(prefix) - len(suffix)
        over = len(prompt) + len(response) - budget
        if over <= 0:
            return prefix + prompt + response + suffix, False
        keep_prompt = min(budget, max(len(prompt) - over, min(len(prompt), self.min_prompt_tokens)))
        keep_response = budget - keep_prompt
        prompt = prompt[len(prompt) - keep_prompt:]
        response = response[:keep_response] if self.truncation == "keep_start" else \
            response[len(response) - keep_response:]
        return prefix + prompt + response + suffix, True

    def text_sequence(self, text: str) -> tuple[list[int], bool]:
        """The ids of a conversation a client already rendered, and whether they were truncated:
        special tokens as for pairs, cut from the left when too long (the end, where a decoder
        reads the reward, stays)."""
        return self._join(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], [])

    def sequence(self, prompt: str, response: str) -> tuple[list[int], bool]:
        """The ids of one side, and whether they were truncated."""
        return self._join(*self._split_ids(prompt, response))

    def encode(self, pairs: list[PreferencePair]) -> list[EncodedPair]:
        encoded = []
        for i, p in enumerate(pairs):
            c_ids, c_cut = self.sequence(p.prompt, p.chosen)
            r_ids, r_cut = self.sequence(p.prompt, p.rejected)
            self.truncated += c_cut or r_cut
            margin = p.meta.get("margin")
            encoded.append(EncodedPair(i, c_ids, r_ids, None if margin is None else float(margin), (c_cut, r_cut)))
        return encoded
