"""Demo services and sagas that show the orchestrator at work."""
