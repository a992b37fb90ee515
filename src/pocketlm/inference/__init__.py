"""Running a model: the PyTorch engine (sampling, KV cache, the fast path for small models), constrained
decoding, and the llama.cpp backend for GGUF files. The terminal chat and the coming server use these."""
