"""The worker process's bookkeeping, pure Python: sequences, the scheduler, KV blocks and the
prefill pacer. No tensors here: app/engine/worker/ runs the model over what this decides."""
