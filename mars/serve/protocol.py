"""What a reward request may say, checked before it is queued: a bad request is answered alone
with a 4xx naming its field, and never fails the batch it would have joined.

Forms (one JSON object each):
- OpenRLHF's remote reward model: `{"query": [text, ...], "prompts": [...], "labels": [...]}`,
  each text a whole rendered conversation; `prompts` and `labels` are accepted and unused.
  Answer: `{"rewards": [...], "truncated": n}`.
- Structured, rendered with the reward model's own chat template (the rewards mars measured):
  `{"prompt": str, "responses": [str, ...]}`, `{"items": [{"prompt", "response"}, ...]}` or
  `{"conversations": [[{"role", "content"}, ...], ...]}` (each ending with the assistant's
  response) → `{"rewards": [...], "truncated": n}`, or
  `{"pairs": [{"prompt", "chosen", "rejected"}, ...]}` → `{"chosen": [...], "rejected": [...],
  "margins": [...], "truncated": n}`.
"""
from __future__ import annotations

from dataclasses import dataclass


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class RewardRequest:
    kind: str  # query | responses | items | conversations | pairs
    rows: list  # texts (query), (prompt, response) tuples (responses, pairs: chosen then rejected per pair)


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(422, f"'{where}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RequestError(422, f"'{where}' is empty")
    return value


def _texts(body: dict, field: str) -> list[str]:
    value = body[field]
    if not isinstance(value, list):
        raise RequestError(422, f"'{field}' must be a list of strings, got {type(value).__name__}")
    return [_text(text, f"{field}[{i}]") for i, text in enumerate(value)]


def _objects(body: dict, field: str, sides: tuple[str, ...]) -> list[tuple[str, str]]:
    """(prompt, response) rows of a list of {prompt, <sides>} objects, side by side."""
    objects = body[field]
    if not isinstance(objects, list):
        raise RequestError(422, f"'{field}' must be a list of objects, got {type(objects).__name__}")
    rows = []
    for i, item in enumerate(objects):
        if not isinstance(item, dict):
            raise RequestError(422, f"'{field}[{i}]' must be an object with prompt, {', '.join(sides)}")
        missing = [k for k in ("prompt",) + sides if k not in item]
        if missing:
            raise RequestError(422, f"'{field}[{i}]' has no '{missing[0]}'")
        if not isinstance(item["prompt"], str):
            raise RequestError(422, f"'{field}[{i}].prompt' must be a string, got {type(item['prompt']).__name__}")
        rows += [(item["prompt"], _text(item[side], f"{field}[{i}].{side}")) for side in sides]
    return rows


def as_prompt(messages: list) -> str:
    """Chat messages as the prompt string mars parses turn by turn (mars.data.format.hh_messages);
    system messages are not part of mars's format."""
    roles = {"user": "Human", "assistant": "Assistant"}
    turns = "".join(f"\n\n{roles[m['role']]}: {m['content']}" for m in messages if m["role"] in roles)
    return turns + "\n\nAssistant:" if turns else ""  # no turn: the response alone


def _conversations(body: dict) -> list[tuple[str, str]]:
    conversations = body["conversations"]
    if not isinstance(conversations, list):
        raise RequestError(422, f"'conversations' must be a list of message lists, got {type(conversations).__name__}")
    rows = []
    for i, messages in enumerate(conversations):
        if not isinstance(messages, list) or not messages:
            raise RequestError(422, f"'conversations[{i}]' must be a non-empty list of messages")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise RequestError(422, f"'conversations[{i}][{j}]' must be a message with role system, user or "
                                        "assistant and its content")
            _text(m.get("content"), f"conversations[{i}][{j}].content")
        if messages[-1]["role"] != "assistant":
            raise RequestError(422, f"'conversations[{i}]' must end with the assistant's response")
        rows.append((as_prompt(messages[:-1]), messages[-1]["content"]))
    return rows


def parse_request(body, max_items: int) -> RewardRequest:
    """The request `body` (parsed JSON) as rows to score; RequestError names what is wrong."""
    if not isinstance(body, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(body).__name__}")
    if "query" in body:
        request = RewardRequest("query", _texts(body, "query"))
    elif "pairs" in body:
        request = RewardRequest("pairs", _objects(body, "pairs", ("chosen", "rejected")))
    elif "items" in body:
        request = RewardRequest("items", _objects(body, "items", ("response",)))
    elif "conversations" in body:
        request = RewardRequest("conversations", _conversations(body))
    elif "responses" in body:
        if not isinstance(body.get("prompt"), str):
            raise RequestError(422, "'prompt' (a string) must come with 'responses'")
        request = RewardRequest("responses", [(body["prompt"], r) for r in _texts(body, "responses")])
    else:
        raise RequestError(422, "the body needs 'query' (OpenRLHF), 'prompt' with 'responses', 'items', "
                                "'conversations' or 'pairs'")
    if not request.rows:
        raise RequestError(422, f"nothing to score: '{request.kind}' is empty")
    if len(request.rows) > max_items:
        raise RequestError(413, f"{len(request.rows)} sequences in one request, more than serve.max_items="
                                f"{max_items}: split it")
    return request


def answer(request: RewardRequest, rewards: list[float], truncated: int) -> dict:
    if request.kind != "pairs":
        return {"rewards": rewards, "truncated": truncated}
    chosen, rejected = rewards[0::2], rewards[1::2]
    return {"chosen": chosen, "rejected": rejected, "margins": [c - r for c, r in zip(chosen, rejected)],
            "truncated": truncated}
