"""MC gateway: the REST front door. Transcodes REST/JSON to the fleet's gRPC services from the
`google.api.http` annotations in the descriptor set, authenticates callers (API keys, OIDC JWTs),
rate-limits them through the limiter, and serves the OpenAPI document of it all."""
