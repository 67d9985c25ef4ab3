"""Stock clients against the engine's real models: the openai SDK (embeddings,
chat, a stream with usage) and tritonclient over HTTP and gRPC (the Open
Inference Protocol's text tensors), each answer checked against the other
API's.

Run by tests/it/real_models.rs with WEIR_HTTP and WEIR_GRPC set to the
engine's addresses; the engine serves smollm2-135m-instruct:1 and
all-minilm-l6-v2.
"""

import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from openai import OpenAI
from tritonclient.utils import InferenceServerException

SMOL = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
client = OpenAI(base_url=f"http://{os.environ['WEIR_HTTP']}/v1", api_key="unused")

sentences = ["A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply today."]
r = client.embeddings.create(model=MINILM, input=sentences)
v = np.array([d.embedding for d in r.data])
assert v.shape == (3, 384), v.shape
sim = v @ v.T
assert sim[0, 1] > 0.8 and sim[0, 2] < 0.2, sim
assert r.usage.prompt_tokens == r.usage.total_tokens > 0
# The SDK asks for base64 by default when numpy is around; ask explicitly too.
r64 = client.embeddings.create(model=MINILM, input="A man is playing a guitar.", encoding_format="base64")
assert len(r64.data) == 1

question = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=f"{SMOL}:1", messages=question, temperature=0)
assert "Paris" in chat.choices[0].message.content, chat
stream = client.chat.completions.create(
    model=f"{SMOL}:1",
    messages=question,
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

# tritonclient: text_input -> text_output equals /v1/completions' greedy text.
prompts = ["The capital of France is", "def fibonacci(n):"]
params = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
greedy = [
    client.completions.create(model=SMOL, prompt=p, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    .choices[0]
    .text
    for p in prompts
]
words = np.array([s.encode() for s in sentences], dtype=np.object_)
for module, url in ((httpclient, os.environ["WEIR_HTTP"]), (grpcclient, os.environ["WEIR_GRPC"])):
    triton = module.InferenceServerClient(url=url)
    meta = triton.get_model_metadata(SMOL)
    config = triton.get_model_config(MINILM)
    if module is grpcclient:
        meta = {"inputs": [{"name": i.name, "datatype": i.datatype} for i in meta.inputs]}
        config = {"output": [{"name": o.name, "dims": list(o.dims)} for o in config.config.output]}
    assert meta["inputs"][0]["name"] == "text_input" and meta["inputs"][0]["datatype"] == "BYTES", meta
    assert config["output"][0]["name"] == "embedding" and list(config["output"][0]["dims"]) == [-1, 384], config

    text_input = module.InferInput("text_input", [len(prompts)], "BYTES")
    text_input.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_))
    result = triton.infer(SMOL, [text_input], model_version="1", parameters=params)
    answers = [a.decode() for a in result.as_numpy("text_output")]
    assert answers == greedy, (module.__name__, answers, greedy)

    text = module.InferInput("text", [len(sentences)], "BYTES")
    text.set_data_from_numpy(words)
    vectors = triton.infer(MINILM, [text]).as_numpy("embedding")
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32, vectors.dtype
    np.testing.assert_allclose(vectors, v, atol=1e-6)

    bad = module.InferInput("text_input", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"Hi"], dtype=np.object_))
    try:
        triton.infer(SMOL, [bad], parameters={"beam_width": 4})
        raise AssertionError("beam_width was accepted")
    except InferenceServerException as e:
        assert "beam_width" in str(e), e
        if module is grpcclient:
            assert "INVALID_ARGUMENT" in str(e.status()), e.status()
    triton.close()
print("OK", file=sys.stderr)
