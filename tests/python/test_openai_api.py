"""The OpenAI API of a running stator peer, driven by the official `openai` client.

Run: STATOR_URL=http://127.0.0.1:8000 pytest tests/python
"""

import json
import urllib.error
import urllib.request

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Name three colours."}]
PROMPT = "The capital of France is"


def greedy_chat(client, model, **extra):
    request = {"model": model, "messages": MESSAGES, "temperature": 0, "max_tokens": 24}
    request.update(extra)
    return client.chat.completions.create(**request)


def assert_usage(usage, max_completion):
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= max_completion
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# --- models -----------------------------------------------------------------------------------


def test_models_lists_the_served_model(client, model):
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# --- chat -------------------------------------------------------------------------------------


def test_chat_non_streaming_is_well_formed(client, model):
    response = greedy_chat(client, model)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == model
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert "<|im_end|>" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert_usage(response.usage, 24)


def test_chat_streaming_matches_non_streaming(client, model):
    whole = greedy_chat(client, model).choices[0].message.content
    chunks = list(greedy_chat(client, model, stream=True))
    assert chunks, "no chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] in ("stop", "length")
    assert all(reason is None for reason in finishes[:-1])


def test_include_usage_sends_a_final_usage_chunk(client, model):
    chunks = list(
        greedy_chat(client, model, stream=True, stream_options={"include_usage": True})
    )
    last = chunks[-1]
    assert last.choices == []
    assert_usage(last.usage, 24)
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_ends_with_done_over_raw_http(base_url, model):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("chatcmpl-")
        events = [e for e in response.read().decode().split("\n\n") if e and not e.startswith(":")]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"


def test_max_tokens_ends_with_length(client, model):
    response = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3


def test_stop_string_cuts_the_reply(client, model):
    reply = greedy_chat(client, model, max_tokens=32).choices[0].message.content
    assert len(reply) >= 6, f"reply too short to pick a stop string from: {reply!r}"
    stop = reply[3:6]
    cut = greedy_chat(client, model, max_tokens=32, stop=[stop]).choices[0]
    assert cut.message.content == reply[: reply.index(stop)]
    assert cut.finish_reason == "stop"


def test_seeded_sampling_is_reproducible(client, model):
    def sample():
        return client.chat.completions.create(
            model=model, messages=MESSAGES, temperature=1.0, top_p=0.95, seed=1234, max_tokens=24
        ).choices[0].message.content

    assert sample() == sample()


def test_chat_logprobs(client, model):
    response = greedy_chat(client, model, logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob >= max(top.logprob for top in entry.top_logprobs) - 1e-4


# --- completions ------------------------------------------------------------------------------


def test_completion_non_streaming_and_streaming_agree(client, model):
    whole = client.completions.create(model=model, prompt=PROMPT, temperature=0, max_tokens=12)
    assert whole.id.startswith("cmpl-")
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert_usage(whole.usage, 12)
    chunks = list(
        client.completions.create(
            model=model,
            prompt=PROMPT,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_echo_and_token_prompt(client, model):
    echoed = client.completions.create(
        model=model, prompt=PROMPT, temperature=0, max_tokens=4, echo=True
    )
    assert echoed.choices[0].text.startswith(PROMPT)
    as_tokens = client.completions.create(model=model, prompt=[1, 2, 3], max_tokens=2)
    assert as_tokens.usage.prompt_tokens == 3


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 5},
        {"max_tokens": -1},
        {"n": 2},
        {"top_p": 0},
        {"presence_penalty": 3},
        {"logprobs": True, "top_logprobs": 50},
        {"stop": ["a", "b", "c", "d", "e"]},
    ],
)
def test_bad_parameters_are_400(client, model, bad):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES, **bad)
    error = caught.value.body
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nonexistent", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


def test_context_length_exceeded(client, model):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10_000_000)
    assert caught.value.code == "context_length_exceeded"


def test_invalid_json_gets_an_openai_shaped_400(base_url):
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=b'{"model": ',
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_server_keeps_serving_after_errors(client, model):
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=model, messages=MESSAGES, temperature=-1)
    assert greedy_chat(client, model, max_tokens=4).choices[0].message.content is not None
