"""The reward model as a LitServe API: requests checked before they are queued (mars.serve.protocol),
batched dynamically, scored by the one scorer exactly as eval.py scores (the export's chat
template and truncation rule; packed or length-sorted batches up to a token budget)."""
from __future__ import annotations

import hmac
import json
import os
from typing import Optional

import litserve as ls
import torch
from starlette.responses import JSONResponse

from mars.evaluation.models import load_scorer
from mars.model.backbone import PackingKeys
from mars.serve.protocol import RequestError, answer, parse_request


class RewardAPI(ls.LitAPI):
    def __init__(self, model: str, max_items: int, max_length: Optional[int] = None, batch_size: int = 16,
                 packing: bool = False, max_tokens: int = 4096, bf16: bool = True, allow_unverified_packing: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.model, self.max_items, self.max_length = model, max_items, max_length
        self.batch_size, self.packing, self.max_tokens, self.bf16 = batch_size, packing, max_tokens, bf16
        self.allow_unverified_packing = allow_unverified_packing

    def setup(self, device: str) -> None:
        self.scorer = load_scorer(self.model, self.max_length, self.batch_size, self.packing, self.max_tokens,
                                  allow_unverified_packing=self.allow_unverified_packing,
                                  keys=PackingKeys(("packing",), "allow_unverified_packing"))
        model = self.scorer.model.to(device)
        if self.bf16 and device.startswith("cuda"):
            model.to(torch.bfloat16)
        self.scorer.device = torch.device(device)

    def decode_request(self, request: dict) -> tuple:  # LitServe passes the parsed body as `request`
        request = parse_request(request, self.max_items)  # checked already: cannot fail here
        fmt = self.scorer.formatter
        cut = [fmt.text_sequence(t) if request.kind == "query" else fmt.sequence(*t) for t in request.rows]
        return request, [ids for ids, _ in cut], sum(truncated for _, truncated in cut)

    def batch(self, inputs: list) -> list:
        return inputs

    def predict(self, inputs) -> list:
        inputs = inputs if isinstance(inputs, list) else [inputs]
        rewards = self.scorer.rows([ids for _, rows, _ in inputs for ids in rows])[0].tolist()
        out, start = [], 0
        for request, rows, truncated in inputs:
            out.append(answer(request, rewards[start:start + len(rows)], truncated))
            start += len(rows)
        return out

    def unbatch(self, outputs: list) -> list:
        return outputs

    def encode_response(self, output) -> dict:
        return output[0] if isinstance(output, list) else output


class CheckRequests:
    """ASGI middleware on the scoring path: the bearer token (when one is set), the body's size
    and form; the server answers a bad request itself and keeps serving."""

    def __init__(self, app, path: str, max_items: int, max_bytes: int, token_env: Optional[str] = None):
        self.app, self.path, self.max_items, self.max_bytes = app, path, max_items, max_bytes
        self.token = os.environ.get(token_env) if token_env else None  # read once, never logged

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        try:
            self._authorize(dict(scope["headers"]))
            body = await self._body(receive)
            parse_request(json.loads(body), self.max_items)
        except RequestError as e:
            return await JSONResponse({"detail": str(e)}, status_code=e.status)(scope, receive, send)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return await JSONResponse({"detail": f"the body is not JSON: {e}"}, status_code=400)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _authorize(self, headers: dict) -> None:
        if self.token is None:
            return
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not hmac.compare_digest(given, f"Bearer {self.token}"):
            raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    async def _body(self, receive) -> bytes:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                raise RequestError(413, f"the body is over serve.max_body_bytes={self.max_bytes} bytes")
        return body
