"""The baseline for HTTP ingestion: parses the same JSON, records nothing."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/v1/usage")
def post_usage():  # type: ignore[no-untyped-def]
    body = request.get_json()
    return jsonify(recorded=len(body) if isinstance(body, list) else 1)
