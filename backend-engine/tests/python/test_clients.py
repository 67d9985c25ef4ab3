"""Stock clients against a running weir-engine.

tritonclient (HTTP and gRPC, unmodified) and the openai SDK (streaming and
not) talk to the engine whose addresses are in WEIR_HTTP and WEIR_GRPC
(host:port); answers are checked against the shipped goldens in
WEIR_GOLDEN (a folder). The engine must serve mlp:1, tiny-lm:1 and tiny-lm:2.

Run by the Rust test `python_clients` (cargo test -p weir-engine), or by hand:
    WEIR_HTTP=127.0.0.1:8000 WEIR_GRPC=127.0.0.1:8001 \\
    WEIR_GOLDEN=backend-engine/models/golden \\
    .venv/bin/python -m unittest -v backend-engine/tests/python/test_clients.py
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import numpy as np
import openai
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

HTTP = os.environ["WEIR_HTTP"]
GRPC = os.environ["WEIR_GRPC"]
GOLDEN = Path(os.environ["WEIR_GOLDEN"])
PROTO = Path(__file__).resolve().parents[2] / "proto" / "grpc_service.proto"


def golden(model: str, version: str) -> dict:
    for path in sorted(GOLDEN.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("model") == model and doc.get("version") == version:
            return doc
    raise AssertionError(f"no golden for {model} v{version} in {GOLDEN}")


MLP = golden("mlp", "1")
LM = {v: golden("tiny-lm", v) for v in ("1", "2")}


class TritonHttp(unittest.TestCase):
    def setUp(self):
        self.client = httpclient.InferenceServerClient(url=HTTP)

    def tearDown(self):
        self.client.close()

    def test_health_and_metadata(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("mlp"))
        self.assertTrue(self.client.is_model_ready("tiny-lm", "2"))
        self.assertFalse(self.client.is_model_ready("nosuch"))
        meta = self.client.get_model_metadata("mlp")
        self.assertEqual(meta["inputs"][0]["name"], "INPUT0")
        self.assertEqual(self.client.get_server_metadata()["name"], "weir-engine")

    def test_infer_binary_and_json(self):
        for binary in (True, False):
            for case in MLP["cases"]:
                x = np.array(case["input"], dtype=np.float32)
                inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
                result = self.client.infer("mlp", [inp], outputs=[out])
                np.testing.assert_allclose(
                    result.as_numpy("OUTPUT0"), np.array(case["output"]), atol=MLP["atol"]
                )
        # No outputs named: the client asks for every output in binary.
        x = np.array(MLP["cases"][0]["input"], dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        self.assertEqual(self.client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape, (1, 4))

    def test_errors(self):
        x = np.zeros((1, 15), dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", [1, 15], "FP32")
        inp.set_data_from_numpy(x)
        with self.assertRaises(InferenceServerException) as e:
            self.client.infer("mlp", [inp])
        self.assertIn("shape", str(e.exception))
        with self.assertRaises(InferenceServerException):
            self.client.infer("nosuch", [inp])


class TritonGrpc(unittest.TestCase):
    def setUp(self):
        self.client = grpcclient.InferenceServerClient(url=GRPC)

    def tearDown(self):
        self.client.close()

    def test_health_and_metadata(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("tiny-lm", "1"))
        self.assertFalse(self.client.is_model_ready("tiny-lm", "7"))
        meta = self.client.get_model_metadata("tiny-lm", as_json=True)
        self.assertEqual(meta["inputs"][0]["datatype"], "INT64")
        self.assertEqual(self.client.get_server_metadata(as_json=True)["name"], "weir-engine")

    def test_infer_raw_contents(self):
        for case in MLP["cases"]:
            x = np.array(case["input"], dtype=np.float32)
            inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = self.client.infer("mlp", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), np.array(case["output"]), atol=MLP["atol"])

    def test_lm_logits(self):
        for version, g in LM.items():
            fl = g["first_step_logits"]
            ids = np.array([fl["input_ids"]], dtype=np.int64)
            inp = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
            inp.set_data_from_numpy(ids)
            result = self.client.infer("tiny-lm", [inp], model_version=version)
            self.assertEqual(result.get_response().model_version, version)
            np.testing.assert_allclose(result.as_numpy("logits")[0], np.array(fl["logits"]), atol=g["logits_atol"])

    def test_errors(self):
        inp = grpcclient.InferInput("INPUT0", [1, 15], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
        with self.assertRaises(InferenceServerException) as e:
            self.client.infer("mlp", [inp])
        self.assertIn("INVALID_ARGUMENT", str(e.exception.status()))
        with self.assertRaises(InferenceServerException) as e:
            self.client.infer("nosuch", [inp])
        self.assertIn("NOT_FOUND", str(e.exception.status()))


class OpenAiSdk(unittest.TestCase):
    def setUp(self):
        self.client = openai.OpenAI(base_url=f"http://{HTTP}/v1", api_key="unused", max_retries=0)

    def test_models(self):
        ids = {m.id for m in self.client.models.list()}
        self.assertTrue({"tiny-lm:1", "tiny-lm:2", "mlp"} <= ids, ids)

    def test_completion_matches_golden(self):
        for version, g in LM.items():
            case = g["greedy"][0]
            r = self.client.completions.create(
                model=f"tiny-lm:{version}", prompt=case["prompt"], max_tokens=g["steps"], temperature=0
            )
            self.assertEqual(r.choices[0].text, case["generated_text"])
            self.assertEqual(r.usage.completion_tokens, g["steps"])
            self.assertEqual(r.model, f"tiny-lm:{version}")

    def test_chat_streaming(self):
        g = LM["2"]
        case = g["greedy"][1]
        stream = self.client.chat.completions.create(
            model="tiny-lm:2",
            messages=[{"role": "user", "content": case["prompt"]}],
            max_tokens=g["steps"],
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, finish, usage = "", None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        self.assertEqual(text, case["generated_text"])
        self.assertEqual(finish, "length")
        self.assertEqual(usage.completion_tokens, g["steps"])

    def test_chat_non_streaming_and_seed(self):
        kwargs = dict(
            model="tiny-lm",
            messages=[{"role": "user", "content": "The Fox and the "}],
            max_tokens=30,
            temperature=0.8,
            seed=1234,
        )
        a = self.client.chat.completions.create(**kwargs)
        b = self.client.chat.completions.create(**kwargs)
        self.assertEqual(a.choices[0].message.content, b.choices[0].message.content)
        self.assertEqual(a.choices[0].message.role, "assistant")

    def test_errors(self):
        with self.assertRaises(openai.NotFoundError):
            self.client.completions.create(model="nosuch", prompt="x")
        with self.assertRaises(openai.BadRequestError):
            self.client.completions.create(model="tiny-lm", prompt="x", temperature=5)


class ProtoMatchesTritonClient(unittest.TestCase):
    """The engine's .proto uses Triton's field numbers and types."""

    @unittest.skipIf(shutil.which("protoc") is None, "protoc not installed")
    def test_fields(self):
        from google.protobuf import descriptor_pb2
        from tritonclient.grpc import model_config_pb2, service_pb2

        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "x.pb"
            subprocess.check_call(["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", str(PROTO)])
            fds = descriptor_pb2.FileDescriptorSet()
            fds.ParseFromString(out.read_bytes())
        mine = fds.file[0]
        self.assertEqual(mine.package, service_pb2.DESCRIPTOR.package)

        def walk(msg, theirs, path):
            for field in msg.field:
                t = theirs.fields_by_name.get(field.name)
                self.assertIsNotNone(t, f"{path}.{field.name}")
                self.assertEqual((t.number, t.type), (field.number, field.type), f"{path}.{field.name}")
            for nested in msg.nested_type:
                if not nested.options.map_entry:
                    walk(nested, theirs.nested_types_by_name[nested.name], f"{path}.{nested.name}")

        for msg in mine.message_type:
            # Triton declares ModelConfig and its parts in model_config.proto,
            # in the same package.
            theirs = service_pb2.DESCRIPTOR.message_types_by_name.get(msg.name)
            walk(msg, theirs or model_config_pb2.DESCRIPTOR.message_types_by_name[msg.name], msg.name)
        for enum in mine.enum_type:
            values = {v.name: v.number for v in model_config_pb2.DESCRIPTOR.enum_types_by_name[enum.name].values}
            for v in enum.value:
                self.assertEqual(values.get(v.name), v.number, f"{enum.name}.{v.name}")
        theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        for method in mine.service[0].method:
            t = theirs.methods_by_name[method.name]
            self.assertEqual("." + t.input_type.full_name, method.input_type)
            self.assertEqual("." + t.output_type.full_name, method.output_type)


if __name__ == "__main__":
    unittest.main(verbosity=2)
