"""Repository-wide pytest set-up: the shared MC fixtures (real Postgres, Redis, Kafka)."""

pytest_plugins = ["mc_common.testing.plugin"]
