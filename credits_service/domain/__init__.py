"""Domain model: plain dataclasses and errors, free of protobuf and SQLAlchemy."""
