"""Episode: a recurring trouble is logged when it starts and when it ends, not on every occurrence."""

from __future__ import annotations

import logging

import pytest

from orchestrator._engine.episodes import Episode


def test_logged_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    episode = Episode(logging.getLogger("test.episodes"), "broker unreachable")
    with caplog.at_level(logging.WARNING, "test.episodes"):
        episode.recovered()  # nothing was wrong: nothing to say
        for i in range(50):
            episode.failed(f"connect refused #{i}")
        assert episode.active
        episode.recovered()
        episode.recovered()
        episode.failed("again")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "connect refused #0" in messages[0]
    assert "recovered after" in messages[1] and "(50 errors)" in messages[1]
    assert "again" in messages[2]
