"""Sandbox implementations of the external systems posflow talks to: review, contract, device
and logistics. FastAPI apps with their own tables, used when no real system is configured."""
