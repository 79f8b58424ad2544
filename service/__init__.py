"""llm-token-metrics: Prometheus metrics of LLM tokens and free-tier quotas."""

__version__ = "0.1.0"
