"""``python -m tests.fakes.serve_fake``: the real ``egemma serve`` path (signals, drain, Hypercorn)
with fake chat models instead of GGUFs, for the SIGTERM drain tests. Settings come from the
environment as for ``egemma serve``; models: ``slow`` (never finishes on its own) and ``fast``
(about half a second)."""

from __future__ import annotations

from egemma.__main__ import _setup_logging, serve_app
from egemma.app import create_app
from egemma.settings import load_settings
from tests.fakes.chat import FakeChatEngine, fake_engines


def main() -> int:
    settings = load_settings(None)
    _setup_logging(settings.server.log_level)
    slow = FakeChatEngine("slow", script="tok " * 100_000, delay=0.01)
    fast = FakeChatEngine("fast", script="tok " * 50, delay=0.01)
    return serve_app(create_app(settings, engines=fake_engines(slow, fast)), settings)


if __name__ == "__main__":
    raise SystemExit(main())
