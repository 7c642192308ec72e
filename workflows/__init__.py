"""The onboarding workflow: deterministic process logic only, no I/O."""
