"""The stock clients through weir to engines serving real models.

WEIR_GATEWAY fronts engine v1 (smollm2-135m-instruct:1, all-minilm-l6-v2) and
engine v2 (smollm2-135m-instruct:2), WEIR_V1 is engine v1 itself (see
gateway/tests/real_models.rs). Chat asks for "smollm2-135m-instruct" and is
split 90/10, each arm renaming the model to the version its engine serves.
"""

import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from openai import OpenAI

GATEWAY = os.environ["WEIR_GATEWAY"]
client = OpenAI(base_url=f"http://{GATEWAY}/v1", api_key="unused", max_retries=0)
engine = OpenAI(base_url=f"http://{os.environ['WEIR_V1']}/v1", api_key="unused", max_retries=0)
LM, EMB = "smollm2-135m-instruct", "all-minilm-l6-v2"
question = [{"role": "user", "content": "What is the capital of France?"}]

# Chat, pinned to v1 by the A/B header: the engine's own greedy answer, under the asked name.
raw = client.chat.completions.with_raw_response.create(
    model=LM, messages=question, temperature=0, extra_headers={"x-ab-group": "v1"}
)
chat = raw.parse()
assert raw.headers["x-weir-arm"] == "v1", raw.headers
assert chat.model == LM, chat.model
assert "Paris" in chat.choices[0].message.content, chat
direct = engine.chat.completions.create(model=f"{LM}:1", messages=question, temperature=0)
assert direct.choices[0].message.content == chat.choices[0].message.content, (direct, chat)

# A stream with usage: the same text, every chunk under the asked name.
stream = client.chat.completions.create(
    model=LM, messages=question, temperature=0, stream=True,
    stream_options={"include_usage": True}, extra_headers={"x-ab-group": "v1"},
)
chunks = list(stream)
assert all(c.model == LM for c in chunks), {c.model for c in chunks}
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == chat.choices[0].message.content, (text, chat)
assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens, chunks[-1].usage
assert chunks[-1].usage.prompt_tokens == chat.usage.prompt_tokens

# The pinned version goes to v2 whatever the split, and keeps its name.
for _ in range(5):
    raw = client.chat.completions.with_raw_response.create(model=f"{LM}:2", messages=question, max_tokens=4)
    assert raw.headers["x-weir-arm"] == "v2" and raw.parse().model == f"{LM}:2"

# Embeddings.
r = client.embeddings.create(
    model=EMB, input=["A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply today."]
)
v = np.array([d.embedding for d in r.data])
sim = v @ v.T
assert v.shape == (3, 384) and sim[0, 1] > 0.8 and sim[0, 2] < 0.2, sim
assert r.model.startswith(EMB) and r.usage.prompt_tokens > 0, (r.model, r.usage)

# The catalogue, from the gateway.
assert sorted(m.id for m in client.models.list()) == sorted([LM, f"{LM}:1", f"{LM}:2", EMB])

# tritonclient: text as BYTES, over HTTP (routed by the path's model) and gRPC.
prompt = "The capital of France is"
want = client.completions.create(
    model=LM, prompt=prompt, max_tokens=8, temperature=0, extra_headers={"x-ab-group": "v1"}
).choices[0].text
http = httpclient.InferenceServerClient(GATEWAY)
t = httpclient.InferInput("text_input", [1], "BYTES")
t.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
out = http.infer(LM, [t], parameters={"max_tokens": 8, "temperature": 0}, headers={"x-ab-group": "v1"})
assert out.as_numpy("text_output")[0].decode() == want, (out.as_numpy("text_output"), want)
grpc = grpcclient.InferenceServerClient(GATEWAY)
e = grpcclient.InferInput("text", [2], "BYTES")
e.set_data_from_numpy(np.array([b"A man is playing a guitar.", b"A person plays the guitar."], dtype=np.object_))
emb = grpc.infer(EMB, [e], headers={"x-ab-group": "v1"}).as_numpy("embedding")
assert emb.shape == (2, 384), emb.shape
assert np.allclose(emb[0], v[0], atol=1e-4), (emb[0][:4], v[0][:4])
grpc.close()
print("OK", file=sys.stderr)
