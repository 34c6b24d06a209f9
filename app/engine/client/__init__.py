"""The API process's side of the engine: the worker handle (spawn, restart), admission, and
output processing (per-step token ids -> detokenized per-request deltas). Never imports torch or
numpy: everything here runs on the HTTP process's event loop or its threads."""
