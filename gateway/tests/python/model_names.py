"""The stock openai SDK through a weir route whose arms rename the model.

WEIR_URL is the gateway's /v1; the route `chat` splits between two test
upstreams known as `vendor/model-a` and `vendor/model-b` (see
gateway/tests/model_names.rs). The upstreams answer with the model they
were sent; the client must see `chat` in every answer and every chunk.
"""

import os
import sys

from openai import OpenAI

client = OpenAI(base_url=os.environ["WEIR_URL"], api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "hi"}]

for _ in range(10):
    answer = client.chat.completions.create(
        model="chat", messages=messages, extra_headers={"x-test-reply": "hello", "x-test-usage": "1"}
    )
    assert answer.model == "chat", answer
    assert answer.choices[0].message.content == "hello", answer

text = "streamed text"  # header values are ASCII; model_names.rs splits UTF-8
for split in ("1", "5"):
    stream = client.chat.completions.create(
        model="chat",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-test-sse": text, "x-test-sse-split": split},
    )
    chunks = list(stream)
    assert all(c.model == "chat" for c in chunks), [c.model for c in chunks]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text), chunks[-1]

models = sorted(m.id for m in client.models.list())
assert models == ["chat", "vendor/model-a", "vendor/model-b"], models
assert client.models.retrieve("vendor/model-b").id == "vendor/model-b"
print("OK", file=sys.stderr)
