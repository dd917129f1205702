"""gRPC plumbing: generated code in v1/, domain conversion and servicers beside it."""
