"""Optional helpers for the services that sagas call; nothing in the core imports them."""
