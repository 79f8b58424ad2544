"""Without prometheus_client the service starts, records nothing and raises nothing."""

import os
import textwrap

from tests.support import run_python_json, write_config

# Runs in a fresh interpreter where every import of prometheus_client fails,
# as it would where the package is not installed.
SCRIPT = textwrap.dedent(
    """
    import json, sys

    class HidePrometheus:
        def find_spec(self, name, path=None, target=None):
            if name == "prometheus_client" or name.startswith("prometheus_client."):
                raise ImportError("prometheus_client is hidden for this test")

    sys.meta_path.insert(0, HidePrometheus())

    from service import metrics
    from service.app import create_app

    metrics.record_tokens("groq", 10, 20)
    metrics.update_quota_usage("groq", "rpm", 50.0)
    client = create_app().test_client()
    usage = client.post("/v1/usage", json={"provider": "groq", "input_tokens": 1,
                                           "output_tokens": 1})
    print(json.dumps({
        "available": metrics.PROMETHEUS_AVAILABLE,
        "objects": [metrics.llm_tokens_consumed, metrics.llm_tokens_total,
                    metrics.llm_quota_usage_percent],
        "metrics": [client.get("/metrics").status_code, client.get("/metrics").get_json()],
        "usage": usage.status_code,
        "healthz": client.get("/healthz").status_code,
    }))
    """
)


def test_service_without_prometheus_client_degrades_to_no_ops(tmp_path):
    env = {**os.environ, "LLM_METRICS_CONFIG": str(write_config(tmp_path))}

    report = run_python_json(SCRIPT, env)

    assert report["available"] is False
    assert report["objects"] == [None, None, None]
    assert report["metrics"][0] == 503
    assert "prometheus_client is not installed" in report["metrics"][1]["error"]
    assert report["usage"] == 503
    assert report["healthz"] == 503
