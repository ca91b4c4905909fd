"""Real servers and helpers that the tests share: proxy, TLS, SCIM, listeners."""
