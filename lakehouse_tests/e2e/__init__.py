"""Tests with real clients against the real ``dagster dev`` (webserver + daemon): GraphQL and Chromium."""
