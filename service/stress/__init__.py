"""Check a deployment: does every recorded token show up in ``/metrics``?

Run ``python -m service.stress --help`` (or ``llm-token-metrics-stress``).
"""

from service.stress.cli import main

__all__ = ["main"]
