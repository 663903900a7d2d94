"""The suites need no wiring of their own: their fixtures come from hil's testing surface (hil.testing,
loaded with hil's pytest plugin), the same ones a user's own suite gets."""
