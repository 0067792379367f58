"""Transport: gRPC servicers, validation, proto <-> domain mapping, the error table."""
