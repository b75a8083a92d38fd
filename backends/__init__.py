"""Built-in execution backends; each module implements the harness.backend.Backend contract."""
