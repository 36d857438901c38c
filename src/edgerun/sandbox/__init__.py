"""Where user code runs: the worker process, its IPC protocol and its launcher."""
