"""Everything with I/O: evidence collection, gRPC services, storage, the loading hook, the CLI."""
