"""Run the stress tool: ``python -m service.stress``."""

from service.stress.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
