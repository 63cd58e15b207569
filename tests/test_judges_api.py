"""The OpenAI and Anthropic judges through their real SDKs against the loopback fake."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from labeler.judges.base import FatalError, Item, RetryableError
from labeler.judges.config import JudgeConfig
from labeler.judges.openai_judge import (
    calibrated_scores,
    make_openai,
    make_openai_compatible,
    scrub,
)
from labeler.judges.prompting import (
    ANALYSIS_SCHEMA,
    AnswerError,
    load_template,
    parse_answer,
    parse_template,
)
from labeler.judges.registry import create_judge
from schemas.errors import UserError
from tests.fakes.llm_server import FakeLLMServer, FaultConfig, score_of

KEY = "sk-test-abcdef123456-SECRET"
ITEM = Item("r1", "Tom has 3 apples and buys 4 more. How many apples does he have?",
            ["Tom starts with 3 apples.", "He buys 4 more: 3 + 4 = <<3+4=7>>7.", "He has 7 apples."], gold_answer="7")


@pytest.fixture
def fake(monkeypatch):
    with FakeLLMServer(FaultConfig(retry_after=0.25)) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def run(judge, item=ITEM):
    async def go():
        try:
            return await judge.judge([item])
        finally:
            await judge.aclose()

    return asyncio.run(go())


def test_openai_one_request_rubric_first_steps_last(fake):
    judge = make_openai("gpt-4o-mini", JudgeConfig())
    [verdict] = run(judge)
    assert verdict.scores == [score_of(s) for s in ITEM.steps]
    assert fake.total_requests == 1  # all steps in ONE request
    sent = fake.requests[0]["body"]
    assert sent == judge.request_body(ITEM)  # the wire body is exactly request_body()
    system, user = sent["messages"][0], sent["messages"][1]
    assert system["role"] == "system" and system["content"].startswith("You are a meticulous grader")
    assert user["content"].startswith(f"Problem:\n{ITEM.prompt}\n")
    assert user["content"].endswith("<step_1>\nTom starts with 3 apples.\n</step_1>\n<step_2>\nHe buys 4 more: "
                                    "3 + 4 = <<3+4=7>>7.\n</step_2>\n<step_3>\nHe has 7 apples.\n</step_3>")
    fmt = sent["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == ANALYSIS_SCHEMA  # analysis first, by default
    assert sent["max_completion_tokens"] == 2048 and sent["temperature"] == 0.0
    assert verdict.headers["x-ratelimit-limit-requests"] == "30000"
    # parse_body on the recorded reply gives the same verdict (the batch mode relies on it).
    assert json.loads(verdict.raw) == {"steps": [
        {"step": i, "analysis": "ok", "verdict": "correct" if score_of(s) >= 0.5 else "incorrect",
         "score": score_of(s)}
        for i, s in enumerate(ITEM.steps, 1)]}


def test_openai_prompt_cache_prefix_is_shared(fake):
    judge = make_openai("gpt-4o-mini", JudgeConfig())
    other = Item("r2", ITEM.prompt, ["Tom has 3 + 4 = 8 apples."])
    [first] = run(judge)
    [second] = run(make_openai("gpt-4o-mini", JudgeConfig()), other)
    assert first.cached_tokens == 0 and second.cached_tokens > 0  # same rubric + problem prefix


def test_openai_logprobs_calibrated_scores(fake):
    judge = make_openai("gpt-4o-mini", JudgeConfig(logprobs=True))
    [verdict] = run(judge)
    assert fake.requests[0]["body"]["logprobs"] is True and fake.requests[0]["body"]["top_logprobs"] == 5
    assert verdict.scores == pytest.approx([0.2 + 0.6 * score_of(s) for s in ITEM.steps], abs=1e-12)
    assert judge.fingerprint() != make_openai("gpt-4o-mini", JudgeConfig()).fingerprint()


def test_calibration_reads_any_tokenization():
    text = '{"steps":[{"step":1,"verdict":"neutral","score":0.5},{"step":2,"verdict":"incorrect","score":0.1}]}'
    tokens, pos = [], 0
    # verdict values split as  ":"  +  neu/in  +  ...  — the covering token starts AT the value.
    pieces = ['{"steps":[{"step":1,"verdict', '":"', 'neu', 'tral","score":0.5},{"step":2,"verdict',
              '":"', 'in', 'correct","score":0.1}]}']
    assert "".join(pieces) == text
    for p in pieces:
        alts = []
        if p == "neu":
            alts = [{"token": "neu", "logprob": math.log(0.5)}, {"token": "correct", "logprob": math.log(0.3)},
                    {"token": "in", "logprob": math.log(0.2)}]
        if p == "in":
            alts = [{"token": "in", "logprob": math.log(0.9)}, {"token": "cor", "logprob": math.log(0.1)}]
        tokens.append({"token": p, "logprob": 0.0, "top_logprobs": alts})
        pos += len(p)
    assert calibrated_scores(text, tokens, 2) == pytest.approx([0.3 + 0.5 * 0.5, 0.1])
    assert calibrated_scores(text, tokens, 3) is None  # step count mismatch
    assert calibrated_scores(text + " ", tokens, 2) is None  # tokens don't spell the text


def test_anthropic_tool_output_and_cache_control(fake):
    judge = create_judge("anthropic:claude-haiku-4-5", JudgeConfig())
    [verdict] = run(judge)
    assert verdict.scores == [score_of(s) for s in ITEM.steps]
    sent = fake.requests[0]["body"]
    assert sent == judge.request_body(ITEM)  # temperature travels via extra_body, body unchanged
    assert sent["tool_choice"] == {"type": "tool", "name": "record_step_verdicts"}
    assert sent["tools"][0]["input_schema"] == ANALYSIS_SCHEMA
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    prefix, steps = sent["messages"][0]["content"]
    assert prefix["cache_control"] == {"type": "ephemeral"} and ITEM.prompt in prefix["text"]
    assert "<step_" not in prefix["text"] and steps["text"].startswith("<step_1>\n") and "cache_control" not in steps
    headers = fake.requests[0]["headers"]
    assert KEY in headers.get("x-api-key", "") + headers.get("authorization", "")
    [again] = run(create_judge("anthropic:claude-haiku-4-5", JudgeConfig()))
    assert again.cached_tokens > 0 and again.input_tokens > again.cached_tokens


@pytest.mark.parametrize("fault, cls, abort", [
    ("429", RetryableError, False), ("500", RetryableError, False), ("529", RetryableError, False),
    ("malformed", RetryableError, False), ("schema", RetryableError, False),
    ("400", FatalError, False), ("401", FatalError, True),
])
@pytest.mark.parametrize("judge_name", ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
def test_error_classification(fake, judge_name, fault, cls, abort):
    fake.faults.script = [fault]
    judge = create_judge(judge_name, JudgeConfig())
    with pytest.raises(cls) as info:
        run(judge)
    exc = info.value
    assert type(exc) is cls
    assert getattr(exc, "abort", False) is abort
    assert KEY not in str(exc)
    if fault == "429":
        assert exc.retry_after == pytest.approx(0.25) and "rate" in str(exc).lower()
    if fault in ("malformed", "schema"):
        assert str(exc).startswith("malformed answer:")
        assert exc.usage["input_tokens"] > 0 and exc.usage["output_tokens"] > 0  # billed all the same
    if fault == "401":
        assert "HTTP 401" in str(exc) and "***" in str(exc)


def test_timeout_is_retryable(fake):
    fake.faults.script = ["slow"]
    fake.faults.slow_s = 1.0
    judge = make_openai("gpt-4o-mini", JudgeConfig(timeout=0.2))
    with pytest.raises(RetryableError, match="timeout: no complete answer within 0.2s"):
        run(judge)


def test_parse_answer_rejects_schema_violations():
    good = {"steps": [{"step": 1, "verdict": "correct", "score": 0.9},
                      {"step": 2, "verdict": "neutral", "score": 0.5}]}
    assert parse_answer(good, 2) == ([0.9, 0.5], ["correct", "neutral"])
    shuffled = {"steps": list(reversed(good["steps"]))}
    assert parse_answer(shuffled, 2)[0] == [0.9, 0.5]
    bad = [
        ({"steps": good["steps"][:1]}, "answer has 1 step(s), the solution has 2"),
        ({"nope": []}, "no 'steps' list"),
        ({"steps": [{**good["steps"][0], "score": 1.5}, good["steps"][1]]}, "step 1: score 1.5"),
        ({"steps": [{**good["steps"][0], "verdict": "maybe"}, good["steps"][1]]}, "verdict 'maybe'"),
        ({"steps": [good["steps"][0], {**good["steps"][1], "step": 3}]}, "not 1..2"),
    ]
    for answer, message in bad:
        with pytest.raises(AnswerError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            parse_answer(answer, 2)


def test_templates(tmp_path):
    default = load_template(None)
    assert default.name == "step_judge_v2"
    r = default.render("P?", ["a", "b"])
    assert r.prefix.endswith("Solution, one tagged step at a time:\n")
    assert r.steps == "<step_1>\na\n</step_1>\n<step_2>\nb\n</step_2>"
    bad = tmp_path / "bad.txt"
    bad.write_text("[system]\nrubric\n[user]\n{problem}\n")
    with pytest.raises(UserError, match=r"bad: the \[user\] section must contain \{problem\} and \{steps\}"):
        load_template(str(bad))
    with pytest.raises(UserError, match="no such file"):
        load_template(str(tmp_path / "missing.txt"))
    custom = parse_template("# v2\n[system]\nBe brief.\n[user]\nQ: {problem}\nRef: {gold_answer}\n{steps}\n", "v2")
    assert custom.render("1+1?", ["2"], "2").user == "Q: 1+1?\nRef: 2\n<step_1>\n2\n</step_1>"


def test_judge_names_keys_and_fingerprints(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match="set the OPENAI_API_KEY environment variable"):
        create_judge("openai:gpt-4o-mini", JudgeConfig())
    with pytest.raises(UserError, match="set the ANTHROPIC_API_KEY environment variable"):
        create_judge("anthropic:claude-haiku-4-5", JudgeConfig())
    # Local OpenAI-protocol servers need no key; the URL is transport, not part of the name.
    j = make_openai_compatible("Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1", JudgeConfig())
    assert j.name == "openai-compatible:Qwen/Qwen2.5-7B-Instruct" and j.model == "Qwen/Qwen2.5-7B-Instruct"
    assert j.request_body(ITEM)["max_tokens"] == 2048
    same = make_openai_compatible("Qwen/Qwen2.5-7B-Instruct@http://other:9000/v1", JudgeConfig(timeout=5))
    assert same.fingerprint() == j.fingerprint()
    hotter = make_openai_compatible("Qwen/Qwen2.5-7B-Instruct@http://other:9000/v1", JudgeConfig(temperature=0.7))
    assert hotter.fingerprint() != j.fingerprint()
    with pytest.raises(UserError, match="expected openai-compatible:MODEL@BASE_URL"):
        make_openai_compatible("Qwen2.5", JudgeConfig())
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    with pytest.raises(UserError, match="--logprobs is not available for anthropic"):
        create_judge("anthropic:claude-haiku-4-5", JudgeConfig(logprobs=True))
    assert KEY not in json.dumps(j.fingerprint_parts())


def test_scrub_masks_keys():
    assert scrub(f"bad key {KEY}!", KEY) == "bad key ***!"
    assert scrub("Incorrect API key provided: sk-proj-abc***********wxyz.", None) == \
        "Incorrect API key provided: sk-***."


def test_answer_cut_off_at_max_tokens_is_an_error_row_not_a_retry(monkeypatch):
    """A truncated answer would be truncated again: retrying it only pays for it again."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    cfg = JudgeConfig(max_output_tokens=64)
    openai_body = {"choices": [{"finish_reason": "length", "message": {"content": '{"steps": [{"ver'}}],
                   "usage": {"prompt_tokens": 100, "completion_tokens": 64}}
    anthropic_body = {"content": [], "stop_reason": "max_tokens", "usage": {"input_tokens": 100, "output_tokens": 64}}
    for name, body in (("openai:gpt-4o-mini", openai_body), ("anthropic:claude-haiku-4-5", anthropic_body)):
        v = create_judge(name, cfg).parse_body(ITEM, body)
        assert v.error and "cut off at 64 output tokens" in v.error and "--max-output-tokens" in v.error
        assert v.scores == [None] * len(ITEM.steps)
        assert (v.input_tokens, v.output_tokens) == (100, 64)  # billed, so counted


def test_openai_reasoning_models_get_no_default_temperature(monkeypatch):
    """o3-mini, o4-mini, gpt-5… answer 400 'temperature is not supported' to temperature 0."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for model in ("o3-mini", "o4-mini-2025-04-16", "o1", "gpt-5-mini", "o3"):
        assert "temperature" not in create_judge(f"openai:{model}", JudgeConfig()).request_body(ITEM), model
    for model in ("gpt-4o-mini", "gpt-4.1", "gpt-5-chat-latest", "omni-moderation"):
        assert create_judge(f"openai:{model}", JudgeConfig()).request_body(ITEM)["temperature"] == 0.0, model
    body = create_judge("openai:o3-mini", JudgeConfig(temperature=1.0)).request_body(ITEM)
    assert body["temperature"] == 1.0  # an explicit choice is sent as given
