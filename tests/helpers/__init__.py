"""What several test modules share: servers and settings, condition waits, metrics, the OpenAPI spec, PromQL."""
