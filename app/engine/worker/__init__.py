"""The worker process: the step loop (main.py), EngineCore, the model runner, the sampler and
CUDA graphs. The only part of the engine that imports torch. llm.py runs the same EngineCore in
the caller's own process."""
