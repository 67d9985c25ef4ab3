"""The stock openai SDK against the engine's real models (embeddings, chat, and
a chat stream whose last chunk carries usage).

Run by tests/it/real_models.rs with WEIR_HTTP set to the engine's address.
"""

import os
import sys

import numpy as np
from openai import OpenAI

client = OpenAI(base_url=f"http://{os.environ['WEIR_HTTP']}/v1", api_key="unused")

r = client.embeddings.create(
    model="all-minilm-l6-v2",
    input=["A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply today."],
)
v = np.array([d.embedding for d in r.data])
assert v.shape == (3, 384), v.shape
sim = v @ v.T
assert sim[0, 1] > 0.8 and sim[0, 2] < 0.2, sim
assert r.usage.prompt_tokens == r.usage.total_tokens > 0
# The SDK asks for base64 by default when numpy is around; ask explicitly too.
r64 = client.embeddings.create(model="all-minilm-l6-v2", input="A man is playing a guitar.", encoding_format="base64")
assert len(r64.data) == 1

chat = client.chat.completions.create(
    model="smollm2-135m-instruct:1",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
)
assert "Paris" in chat.choices[0].message.content, chat
stream = client.chat.completions.create(
    model="smollm2-135m-instruct:1",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == chat.choices[0].message.content, (text, chat.choices[0].message.content)
# With include_usage every chunk has usage null but the last, which has no
# choices and the same counts as the answer without streaming.
last = chunks[-1]
assert last.choices == [] and last.usage is not None, last
assert all(c.usage is None for c in chunks[:-1])
assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
    chat.usage.prompt_tokens,
    chat.usage.completion_tokens,
    chat.usage.total_tokens,
), (last.usage, chat.usage)
print("OK", file=sys.stderr)
