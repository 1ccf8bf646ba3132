# SPDX-License-Identifier: Apache-2.0
"""OpenAI chat-completions requests -> engine prompts, with one clear message per bad input (:class:`BadRequest`).

Accepted: ``messages`` (string content, or parts of type ``text`` / ``image_url`` with a ``data:`` URL: the server
fetches nothing), ``max_tokens`` (or ``max_completion_tokens``), ``stop`` (string or up to 4), ``stream``,
``model``. Everything else is ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field

import numpy as np

from ..runtime.multimodal import Prompt


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ChatRequest:
    model: str
    prompt: Prompt
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    stream: bool = False


def _image(url: str, index: int):
    from PIL import Image, UnidentifiedImageError

    if not isinstance(url, str) or not url.startswith("data:"):
        raise BadRequest(400, f"image {index}: only data: URLs (base64) are accepted; the server fetches nothing")
    header, _, payload = url.partition(",")
    if ";base64" not in header or not payload:
        raise BadRequest(400, f"image {index}: expected data:image/...;base64,<data>")
    try:
        return Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as e:
        raise BadRequest(400, f"image {index} could not be decoded ({type(e).__name__})") from None


def _messages(messages, image_token: str) -> tuple[list[dict], list]:
    """-> chat messages with string content (images replaced by the model's image token), the images in order."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages must be a non-empty list")
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(400, f"messages[{i}] needs a role of system, user or assistant")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise BadRequest(400, f"messages[{i}].content must be a string or a list of parts")
        text = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                text.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                images.append(_image(url.get("url") if isinstance(url, dict) else url, len(images)))
                text.append(image_token)
            else:
                raise BadRequest(400, f"messages[{i}]: a content part must be text or image_url")
        out.append({"role": m["role"], "content": "\n".join(text)})
    return out, images


def parse_chat(body: bytes, served: str, processor, max_sequence: int) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"request body is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "request body must be a JSON object")
    model = data.get("model", served)
    if model != served:
        raise BadRequest(404, f"model {model!r} not found; this server serves {served!r} (GET /v1/models)")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens", 16))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens < max_sequence:
        raise BadRequest(400, f"max_tokens must be an integer in [1, {max_sequence - 1}]")
    stop = data.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest(400, "stop must be a string or a list of at most 4 non-empty strings")
    if processor is None:
        raise BadRequest(400, "this engine has no tokenizer (built from a model directory without one)")
    token = getattr(processor, "image_token", "<image>")
    messages, images = _messages(data.get("messages"), token)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages)
    try:
        enc = processor(images=images, text=text, return_tensors="np") if images else \
            processor(text=text, return_tensors="np")
    except ValueError as e:
        raise BadRequest(400, f"the prompt does not match its images ({e})") from None
    ids = np.asarray(enc["input_ids"][0], dtype=np.int64)
    if len(ids) + max_tokens > max_sequence:
        raise BadRequest(400, f"the prompt has {len(ids)} tokens; with max_tokens {max_tokens} that is "
                              f"{len(ids) + max_tokens}, beyond the engine's limit of {max_sequence}")
    prompt = Prompt(ids, enc.get("pixel_values"), enc.get("image_sizes"), enc.get("image_grid_thw"))
    return ChatRequest(model, prompt, max_tokens, stop, bool(data.get("stream", False)))
