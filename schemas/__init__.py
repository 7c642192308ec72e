"""Pydantic models shared by the workflow, activities, workers and clients of posflow."""
