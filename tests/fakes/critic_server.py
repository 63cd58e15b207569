"""A scripted critic behind the loopback fake: the test decides every answer.

:class:`ScriptedCritic` is the fake of ``llm_server`` (same wire protocols, same SDK paths) with
the two answer routes replaced: each request's tagged steps are parsed back out of the prompt
(``<step_N>`` or ProcessBench's ``<paragraph_N>``) and handed, with the request body and how
many times the same prompt was asked before, to the test's ``script`` function, which returns
the answer: a dict (the JSON answer / tool input), a str (free text: the ProcessBench critique),
or a :class:`Reply` for a cut-off answer or exact token counts. So a test knows the exact scores
every judge path must produce, and can make samples disagree, answers malformed or truncated.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakes.llm_server import FakeLLMServer, FaultConfig, ntokens, split_steps


@dataclass
class Reply:
    answer: dict | str
    cut_off: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class Ask:
    """What the script sees of one request."""

    protocol: str  # "openai" | "anthropic"
    steps: list[str]
    user: str
    body: dict
    call: int  # how many times this exact prompt was asked before (0 for the first)


Script = Callable[[Ask], "dict | str | Reply"]


class ScriptedCritic(FakeLLMServer):
    def __init__(self, script: Script, faults: FaultConfig | None = None, usage: tuple[int, int] | None = None) -> None:
        super().__init__(faults)
        self.script = script
        self.usage = usage  # fixed (input, output) tokens per answer, for exact cost tests
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self.routes[("POST", "/v1/chat/completions")] = ScriptedCritic.scripted_chat
        self.routes[("POST", "/v1/messages")] = ScriptedCritic.scripted_messages

    def _ask(self, protocol: str, user: str, body: dict) -> tuple[Reply, Ask]:
        with self._calls_lock:
            call = self.calls[user]
            self.calls[user] += 1
        ask = Ask(protocol, split_steps(user), user, body, call)
        reply = self.script(ask)
        return (reply if isinstance(reply, Reply) else Reply(reply)), ask

    def _tokens(self, reply: Reply, prompt: str, text: str) -> tuple[int, int]:
        if reply.input_tokens is not None:
            return reply.input_tokens, reply.output_tokens or 0
        if self.usage is not None:
            return self.usage
        return ntokens(prompt), ntokens(text)

    def scripted_chat(self, h: Any, body: dict) -> None:
        if self._common_fault(h, self._draw_fault(), anthropic=False):
            return
        messages = body.get("messages", [])
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        reply, _ = self._ask("openai", user, body)
        text = reply.answer if isinstance(reply.answer, str) else json.dumps(reply.answer)
        if reply.cut_off:
            text = text[: len(text) // 2]
        inp, out = self._tokens(reply, "".join(m["content"] for m in messages), text)
        h.send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "length" if reply.cut_off else "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}],
            "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        }, self._rl_headers(False, 30_000, 30_000))

    def scripted_messages(self, h: Any, body: dict) -> None:
        if self._common_fault(h, self._draw_fault(), anthropic=True):
            return
        user = "".join(block.get("text", "") for m in body.get("messages", []) for block in m["content"])
        reply, _ = self._ask("anthropic", user, body)
        if isinstance(reply.answer, str):
            content = [{"type": "text", "text": reply.answer[: len(reply.answer) // 2] if reply.cut_off
                        else reply.answer}]
        elif reply.cut_off:
            content = []
        else:
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}",
                        "name": body["tools"][0]["name"], "input": reply.answer}]
        if body.get("thinking"):
            content = [{"type": "thinking", "thinking": "Let me check each step.", "signature": "sig"}, *content]
        inp, out = self._tokens(reply, user, json.dumps(content))
        h.send_json(200, {
            "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
            "model": body.get("model", "fake"), "content": content,
            "stop_reason": "max_tokens" if reply.cut_off else ("end_turn" if isinstance(reply.answer, str) else "tool_use"),
            "stop_sequence": None,
            "usage": {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
        }, self._rl_headers(True, 30_000, 30_000))


def step_answer(verdicts: list[str], scores: list[float] | None = None, analysis: bool = True) -> dict:
    """A JSON answer giving ``verdicts`` (and ``scores``, default 1/0.5/0 by verdict)."""
    value = {"correct": 1.0, "neutral": 0.5, "incorrect": 0.0}
    out = []
    for i, v in enumerate(verdicts, 1):
        entry: dict[str, Any] = {"step": i}
        if analysis:
            entry["analysis"] = f"checked step {i}: {v}"
        entry["verdict"] = v
        entry["score"] = value[v] if scores is None else scores[i - 1]
        out.append(entry)
    return {"steps": out}
