"""Pure cryptographic formats: sealed weights, key wrapping, token-stream records."""
