"""Repository-wide pytest set-up: the shared MC fixtures (real Postgres, Redis, Kafka), and
under CI a skipped test fails the run."""

pytest_plugins = ["mc_common.testing.plugin", "mc_common.testing.ci"]
