"""Running generated code: the sandbox, benchmarks and pass@k, sampling, preference pairs, rewards."""
