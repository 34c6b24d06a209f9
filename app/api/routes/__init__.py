"""One router per module; app.main includes them all."""
