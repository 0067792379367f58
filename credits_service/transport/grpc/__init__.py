"""The gRPC transport: interceptors (auth, admission, logging, metrics), servicers by API
family with their validation and mapping, the one error table, and the server."""
