"""Turning pairs into token ids once: text format, truncation rule, and the count of truncations.

Truncation rule (documented in the README): a sequence is [special] prompt response [special].
When it exceeds `max_length`, the prompt is cut from the left first (its latest turn, next to the
response, stays) down to `min_prompt_tokens`; if that is not enough, the response is cut from the
left so that its end stays visible. Pairs are never dropped; every truncated pair is counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mars.data.records import PreferencePair

HH_PREFIX = "\n\nHuman:"


def format_prompt(prompt: str) -> str:
    """The text before the response: HH-RLHF strings as they are, plain prompts in HH format."""
    if not prompt or prompt.startswith(HH_PREFIX):
        return prompt
    return f"{HH_PREFIX} {prompt}\n\nAssistant:"


def _hh_messages(prompt: str) -> list[dict[str, str]]:
    """An HH-format dialogue string as chat messages (for tokenizers with a chat template)."""
    messages = []
    for turn in prompt.split("\n\n")[1:]:
        role, _, text = turn.partition(":")
        if role.strip() in ("Human", "Assistant") and text.strip():
            messages.append({"role": "user" if role.strip() == "Human" else "assistant",
                             "content": text.strip()})
    return messages


@dataclass
class EncodedPair:
    """Token ids of one pair, special tokens included; `index` is the pair's place in its set."""

    index: int
    chosen: list[int]
    rejected: list[int]

    @property
    def length(self) -> int:
        return max(len(self.chosen), len(self.rejected))


@dataclass
class PairEncoder:
    """Tokenises prompts and responses once (memoised by text) and applies the truncation rule."""

    tokenizer: object
    max_length: int
    min_prompt_tokens: int = 32
    use_chat_template: bool = False
    truncated: int = 0  # pairs with at least one side truncated, since creation
    _memo: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        probe = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(probe)) if probe[i:i + len(bare)] == bare)
        self.prefix, self.suffix = probe[:start], probe[start + len(bare):]
        self.budget = self.max_length - len(self.prefix) - len(self.suffix)

    def _split_text(self, prompt: str, response: str) -> tuple[str, str]:
        if self.use_chat_template and prompt:
            messages = _hh_messages(format_prompt(prompt)) or [{"role": "user", "content": prompt}]
            full = self.tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": response}], tokenize=False)
            cut = full.rfind(response)
            return full[:cut], full[cut:]
        head = format_prompt(prompt)
        return head, (" " + response if head else response)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            out = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            self._memo.update(zip(missing, out))
        return [self._memo[t] for t in texts]

    def _join(self, prompt: list[int], response: list[int]) -> tuple[list[int], bool]:
        over = len(prompt) + len(response) - self.budget
        if over <= 0:
            return self.prefix + prompt + response + self.suffix, False
        keep_prompt = min(self.budget, max(len(prompt) - over, min(len(prompt), self.min_prompt_tokens)))
        keep_response = self.budget - keep_prompt
        prompt = prompt[len(prompt) - keep_prompt:]
        response = response[len(response) - keep_response:]
        return self.prefix + prompt + response + self.suffix, True

    def encode(self, pairs: list[PreferencePair]) -> list[EncodedPair]:
        heads, chosen, rejected = [], [], []
        for p in pairs:
            h, c = self._split_text(p.prompt, p.chosen)
            _, r = self._split_text(p.prompt, p.rejected)
            heads.append(h), chosen.append(c), rejected.append(r)
        head_ids, chosen_ids, rejected_ids = self._ids(heads), self._ids(chosen), self._ids(rejected)
        encoded = []
        for i, (h, c, r) in enumerate(zip(head_ids, chosen_ids, rejected_ids)):
            c_ids, c_cut = self._join(h, c)
            r_ids, r_cut = self._join(h, r)
            self.truncated += c_cut or r_cut
            encoded.append(EncodedPair(i, c_ids, r_ids))
        return encoded
