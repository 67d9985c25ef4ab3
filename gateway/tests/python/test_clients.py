"""Stock clients through a running weir gateway.

The gateway at WEIR_GATEWAY (admin WEIR_ADMIN) fronts two weir-engines:
v1 serves tiny-lm:1 and mlp, v2 serves tiny-lm:2. Its routes (see
gateway/tests/clients.rs): `chat` splits HTTP 80/20, `oip-grpc` splits the
gRPC service 80/20 (sticky on x-user-id), `mlp` and `pinned-v2` route by
model to the engine that has it. The gateway at WEIR_ERRORS routes only
ModelInfer (key WEIR_KEY, one call per second) and ModelMetadata (to a
dead backend), so every other call has no route. WEIR_TLS is the first
gateway's TLS listener, its certificate (self-signed) in WEIR_CA.
WEIR_FRONT is a gateway whose only upstream is that TLS listener, by
name, over an `h2` pool (gRPC) and an `http1` pool with TLS.

Run by the Rust test `clients` (cargo test -p weir-gateway --test clients).
"""

import collections
import http.client
import os
import socket
import ssl
import unittest
import urllib.request

import httpx2

import numpy as np
import openai
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

GATEWAY = os.environ["WEIR_GATEWAY"]
ADMIN = os.environ["WEIR_ADMIN"]
ERRORS = os.environ["WEIR_ERRORS"]
ERRORS_ADMIN = os.environ["WEIR_ERRORS_ADMIN"]
KEY = os.environ["WEIR_KEY"]
TLS = os.environ["WEIR_TLS"]
CA = os.environ["WEIR_CA"]
FRONT = os.environ["WEIR_FRONT"]


def metric_sum(name: str, admin: str = ADMIN, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def lm_input(client_module):
    ids = np.arange(16, dtype=np.int64).reshape(1, 16)
    inp = client_module.InferInput("input_ids", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids)
    return inp


def mlp_input(client_module):
    x = np.zeros((1, 16), dtype=np.float32)
    inp = client_module.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


class OpenAiSdk(unittest.TestCase):
    def setUp(self):
        self.client = openai.OpenAI(base_url=f"http://{GATEWAY}/v1", api_key="unused", max_retries=0)

    def test_models_and_completions(self):
        ids = {m.id for m in self.client.models.list()}
        self.assertTrue(ids & {"tiny-lm:1", "tiny-lm:2"}, ids)
        r = self.client.completions.create(model="tiny-lm", prompt="The Fox and the ", max_tokens=8, temperature=0)
        self.assertTrue(r.choices[0].text)
        self.assertEqual(r.usage.completion_tokens, 8)

    def test_chat(self):
        r = self.client.chat.completions.create(
            model="tiny-lm", messages=[{"role": "user", "content": "Once upon a "}], max_tokens=6, temperature=0
        )
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertEqual(r.usage.completion_tokens, 6)

    def test_chat_streaming_with_usage_is_measured(self):
        before = metric_sum("weir_time_to_first_token_seconds_count", route="chat")
        tokens_before = metric_sum("weir_tokens_total", route="chat", direction="output")
        stream = self.client.chat.completions.create(
            model="tiny-lm",
            messages=[{"role": "user", "content": "The Fox and the "}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, chunks = "", None, 0
        for chunk in stream:
            chunks += 1
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
        self.assertTrue(text)
        self.assertGreater(chunks, 2)
        self.assertEqual(usage.completion_tokens, 12)
        self.assertEqual(metric_sum("weir_time_to_first_token_seconds_count", route="chat"), before + 1)
        self.assertGreaterEqual(metric_sum("weir_tokens_total", route="chat", direction="output"), tokens_before + 12)

    def test_the_body_model_picks_the_route(self):
        # Only v2 serves tiny-lm:2: the chat split would send 80% to v1.
        for _ in range(15):
            r = self.client.completions.create(model="tiny-lm:2", prompt="a", max_tokens=2, temperature=0)
            self.assertEqual(r.model, "tiny-lm:2")

    def test_the_ab_header_picks_the_arm(self):
        for arm in ("v1", "v2"):
            for _ in range(5):
                raw = self.client.completions.with_raw_response.create(
                    model="tiny-lm", prompt="a", max_tokens=2, extra_headers={"x-ab-group": arm}
                )
                self.assertEqual(raw.headers["x-weir-arm"], arm)
                self.assertEqual(raw.parse().model, "tiny-lm:" + arm[1])

    def test_unknown_model_is_the_engines_404(self):
        with self.assertRaises(openai.NotFoundError):
            self.client.completions.create(model="nosuch", prompt="x", extra_headers={"x-ab-group": "v1"})


class TritonHttp(unittest.TestCase):
    def setUp(self):
        self.client = httpclient.InferenceServerClient(url=GATEWAY)

    def tearDown(self):
        self.client.close()

    def test_health_metadata_and_infer(self):
        self.assertTrue(self.client.is_server_live())
        meta = self.client.get_model_metadata("tiny-lm", headers={"x-ab-group": "v2"})
        self.assertEqual(meta["versions"], ["2"])
        for arm in ("1", "2"):
            result = self.client.infer("tiny-lm", [lm_input(httpclient)], headers={"x-ab-group": "v" + arm})
            self.assertEqual(result.get_response()["model_version"], arm)

    def test_the_path_model_picks_the_route(self):
        # Only v1 serves mlp.
        for _ in range(15):
            result = self.client.infer("mlp", [mlp_input(httpclient)])
            self.assertEqual(result.as_numpy("OUTPUT0").shape, (1, 4))


class TritonGrpc(unittest.TestCase):
    def setUp(self):
        self.client = grpcclient.InferenceServerClient(url=GATEWAY)

    def tearDown(self):
        self.client.close()

    def version_of(self, **kw):
        return self.client.get_model_metadata("tiny-lm", as_json=True, **kw)["versions"][0]

    def test_health_metadata_and_infer(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertEqual(self.client.get_server_metadata(as_json=True)["name"], "weir-engine")
        meta = self.client.get_model_metadata("tiny-lm", as_json=True)
        self.assertEqual(meta["inputs"][0]["datatype"], "INT64")
        result = self.client.infer("mlp", [mlp_input(grpcclient)], headers={"x-ab-group": "v1"})
        self.assertEqual(result.as_numpy("OUTPUT0").shape, (1, 4))

    def test_ab_metadata_steers_calls(self):
        for arm in ("1", "2"):
            for _ in range(5):
                self.assertEqual(self.version_of(headers={"x-ab-group": "v" + arm}), arm)
                result = self.client.infer("tiny-lm", [lm_input(grpcclient)], headers={"x-ab-group": "v" + arm})
                self.assertEqual(result.get_response().model_version, arm)

    def test_weighted_split_holds(self):
        counts = collections.Counter(self.version_of() for _ in range(400))
        share = counts["2"] / 400
        # 80/20: the v2 share is 0.2 with a standard deviation of 0.02.
        self.assertTrue(0.12 <= share <= 0.28, counts)
        self.assertGreater(metric_sum("weir_requests_total", route="oip-grpc", arm="v2"), 0)
        # OK arrives in the trailers of each answer.
        self.assertGreaterEqual(metric_sum("weir_grpc_responses_total", route="oip-grpc", grpc_status="OK"), 400)

    def test_sticky_metadata_keeps_a_user_on_one_version(self):
        seen = set()
        for user in range(12):
            versions = {self.version_of(headers={"x-user-id": f"user-{user}"}) for _ in range(6)}
            self.assertEqual(len(versions), 1, (user, versions))
            seen |= versions
        self.assertEqual(seen, {"1", "2"})

    def test_upstream_statuses_pass_through(self):
        with self.assertRaises(InferenceServerException) as e:
            self.client.infer("nosuch", [mlp_input(grpcclient)], headers={"x-ab-group": "v1"})
        self.assertEqual(e.exception.status(), "StatusCode.NOT_FOUND")
        self.assertIn("nosuch", e.exception.message())
        self.assertGreaterEqual(
            metric_sum("weir_grpc_responses_total", route="oip-grpc", arm="v1", grpc_status="NOT_FOUND"), 1
        )


class GatewayMadeGrpcErrors(unittest.TestCase):
    def setUp(self):
        self.client = grpcclient.InferenceServerClient(url=ERRORS)

    def tearDown(self):
        self.client.close()

    def status_of(self, call):
        with self.assertRaises(InferenceServerException) as e:
            call()
        return e.exception.status(), e.exception.message()

    def test_no_route_is_unimplemented(self):
        status, message = self.status_of(self.client.is_server_live)
        self.assertEqual(status, "StatusCode.UNIMPLEMENTED")
        self.assertIn("no route matches /inference.GRPCInferenceService/ServerLive", message)
        self.assertGreaterEqual(metric_sum("weir_grpc_responses_total", ERRORS_ADMIN, grpc_status="UNIMPLEMENTED"), 1)

    def test_no_backend_is_unavailable(self):
        status, _ = self.status_of(lambda: self.client.get_model_metadata("mlp"))
        self.assertEqual(status, "StatusCode.UNAVAILABLE")

    def test_auth_and_rate_limit(self):
        status, _ = self.status_of(lambda: self.client.infer("mlp", [mlp_input(grpcclient)]))
        self.assertEqual(status, "StatusCode.UNAUTHENTICATED")
        status, _ = self.status_of(
            lambda: self.client.infer("mlp", [mlp_input(grpcclient)], headers={"authorization": "Bearer wrong"})
        )
        self.assertEqual(status, "StatusCode.UNAUTHENTICATED")
        auth = {"authorization": f"Bearer {KEY}"}
        statuses = []
        for _ in range(3):
            try:
                self.client.infer("mlp", [mlp_input(grpcclient)], headers=auth)
                statuses.append("OK")
            except InferenceServerException as e:
                statuses.append(e.status())
        # One call per second: the first passes, the next ones (immediate) do not.
        self.assertEqual(statuses[0], "OK", statuses)
        self.assertIn("StatusCode.RESOURCE_EXHAUSTED", statuses[1:], statuses)


class Tls(unittest.TestCase):
    host, port = TLS.rsplit(":", 1)

    def context(self, alpn):
        ctx = ssl.create_default_context(cafile=CA)
        ctx.set_alpn_protocols(alpn)
        return ctx

    def negotiated(self, alpn):
        with socket.create_connection((self.host, int(self.port)), timeout=10) as raw:
            with self.context(alpn).wrap_socket(raw, server_hostname=self.host) as tls:
                return tls.selected_alpn_protocol()

    def test_alpn_prefers_h2_and_allows_http1(self):
        self.assertEqual(self.negotiated(["h2", "http/1.1"]), "h2")
        self.assertEqual(self.negotiated(["http/1.1"]), "http/1.1")
        conn = http.client.HTTPSConnection(self.host, int(self.port), context=self.context(["http/1.1"]), timeout=10)
        conn.request("GET", "/v1/models", headers={"x-ab-group": "v2"})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("x-weir-arm"), "v2")
        conn.close()

    def test_grpc_over_tls(self):
        client = grpcclient.InferenceServerClient(url=TLS, ssl=True, root_certificates=CA)
        try:
            self.assertTrue(client.is_server_live())
            meta = client.get_model_metadata("tiny-lm", as_json=True, headers={"x-ab-group": "v2"})
            self.assertEqual(meta["versions"], ["2"])
        finally:
            client.close()

    def test_grpc_through_a_tls_pool(self):
        # WEIR_FRONT's only upstream is this gateway's TLS listener, over an
        # `h2` pool (TLS + ALPN, the CA verified): gRPC end to end.
        client = grpcclient.InferenceServerClient(url=FRONT)
        try:
            meta = client.get_model_metadata("tiny-lm", as_json=True, headers={"x-ab-group": "v2"})
            self.assertEqual(meta["versions"], ["2"])
            result = client.infer("mlp", [mlp_input(grpcclient)], headers={"x-ab-group": "v1"})
            self.assertEqual(result.as_numpy("OUTPUT0").shape, (1, 4))
        finally:
            client.close()
        # The OpenAI API over the same name through an `http1` TLS pool.
        client = openai.OpenAI(base_url=f"http://{FRONT}/v1", api_key="unused", max_retries=0)
        r = client.completions.create(model="tiny-lm:2", prompt="a", max_tokens=2)
        self.assertEqual(r.model, "tiny-lm:2")

    def test_openai_over_tls(self):
        with httpx2.Client(verify=self.context(["http/1.1"])) as http_client:
            client = openai.OpenAI(base_url=f"https://{TLS}/v1", api_key="unused", max_retries=0, http_client=http_client)
            r = client.completions.create(model="tiny-lm:2", prompt="a", max_tokens=2)
            self.assertEqual(r.model, "tiny-lm:2")


if __name__ == "__main__":
    unittest.main(verbosity=2)
