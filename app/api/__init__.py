"""The HTTP layer: FastAPI only. Never imports torch, app.model or engine internals."""
